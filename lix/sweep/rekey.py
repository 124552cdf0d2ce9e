"""Carry a profile's ledger across a change that is not a training-code change
(``lix sweep --profile <name> --rekey``).

The sweep finds a run in the ledger by its run digest (lix.sweep.profile.run_digest), and that
digest includes the training-code digest (lix.provenance.code_digest). Widening what that digest
leaves out (``NOT_TRAINING_CODE``), or an edit to a module it then leaves out, changes every run's
digest although no run would train differently: the sweep would redo the whole matrix. ``--rekey``
gives a ledger line the digest this checkout computes for its run only where three checks prove
that the run is what this checkout would train:

1. **same run**: the line's digest, recomputed from this checkout's profile, params.yaml and data
   recipe with the code digest the line was keyed on, is the line's digest (so only the code can
   differ);
2. **its commit is its code**: the commit the line records (its tracked ``lix`` and ``pipeline``
   files, read from git) hashes, under the exclusions that commit defined, to that code digest
   (so the run's working tree held that commit's training code). When that commit is lost
   (amended, never pushed) or does not hash to it, another line's commit of the same code digest
   may: the digest hashes each file's path and content, so a commit that reproduces it holds the
   very files the run executed;
3. **same training code**: that commit's files inside this checkout's digest equal this
   checkout's, file by file, ``NOT_TRAINING_CODE``'s own statement left aside (the scope of the
   digest is not code a run executes).

A rekeyed line keeps all it recorded (its ``code_digest`` is the run's code under its own scope)
and gains ``rekeyed``: ``from`` (its former digest), ``code_digest`` and ``commit`` (this
checkout's, which a later rekey starts from), ``proof`` (the commit that passed checks 2 and
3), ``date``. The ledger is otherwise appended to only.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from lix.config import Params
from lix.provenance import NOT_TRAINING_CODE, code_digest
from lix.sweep.ledger import Ledger, run_key
from lix.sweep.profile import Profile, Run, digests, runs
from pipeline.errors import DataError

PACKAGES = ("lix", "pipeline")
# Where a commit defines NOT_TRAINING_CODE: the first of these files that has the statement.
SCOPE_FILES = ("lix/provenance.py",)


@dataclass
class RekeyOutcome:
    lines: list[dict]  # the ledger's lines after the rekey, in the same order
    rekeyed: list[str] = field(default_factory=list)  # stages given this checkout's digest
    current: list[str] = field(default_factory=list)  # stages whose digest already is this checkout's
    refused: dict[str, str] = field(default_factory=dict)  # stage -> why its line keeps its digest


class GitTree:
    """The tracked ``lix`` / ``pipeline`` files of commits of the repository at ``repo`` (cached)."""

    def __init__(self, repo: Path):
        self.repo = Path(repo)
        self._files: dict[str, dict[str, bytes] | None] = {}
        # paths in ls-tree are from the repository's root whatever folder of it ``repo`` names
        self.repo = Path(self._git("rev-parse", "--show-toplevel").decode().strip())

    def _git(self, *args: str, stdin: bytes | None = None) -> bytes:
        try:
            res = subprocess.run(["git", "-C", str(self.repo), *args], input=stdin, capture_output=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise DataError(self.repo, f"git {' '.join(args)} could not run ({e}); --rekey reads commits with git")
        if res.returncode != 0:
            raise DataError(self.repo, f"git {' '.join(args)} failed: {res.stderr.decode(errors='replace').strip()}")
        return res.stdout

    def files(self, commit: str) -> dict[str, bytes] | None:
        """path -> content of ``commit``'s files under the packages; None when git lacks the commit."""
        if commit not in self._files:
            try:
                self._git("cat-file", "-e", f"{commit}^{{commit}}")
            except DataError:
                self._files[commit] = None
                return None
            names = [n for n in self._git("ls-tree", "-r", "-z", "--name-only", commit, "--", *PACKAGES)
                     .decode().split("\0") if n]
            blob = self._git("cat-file", "--batch", stdin="".join(f"{commit}:{n}\n" for n in names).encode())
            out, pos = {}, 0
            for name in names:  # each answer: "<sha> blob <size>\n<content>\n"
                end = blob.index(b"\n", pos)
                head = blob[pos:end].split()
                if len(head) != 3 or head[1] != b"blob":  # "<name> missing" (a partial clone), a submodule
                    raise DataError(self.repo, f"git has no content for {commit[:12]}:{name} "
                                               f"({blob[pos:end].decode(errors='replace')}); fetch the full history")
                size = int(head[2])
                out[name] = blob[end + 1:end + 1 + size]
                pos = end + 1 + size + 1
            self._files[commit] = out
        return self._files[commit]

    def head(self) -> str:
        return self._git("rev-parse", "HEAD").decode().strip()


def digest_sources(files: Iterable[tuple[str, bytes]], exclude: tuple[str, ...] = NOT_TRAINING_CODE) -> str:
    """lix.provenance.code_digest of ``files`` ((path from the repository root in POSIX form,
    content) pairs) instead of the checkout: each ``.py`` file outside ``__pycache__`` and the
    ``exclude`` prefixes, hashed as path, NUL, content, NUL in the order of their path
    components, as code_digest walks them. Kept here, not shared with code_digest, because an
    edit to provenance.py is a training-code edit; a test holds the two equal on the checkout."""
    h = hashlib.sha256()
    for rel, data in sorted(files, key=lambda f: PurePosixPath(f[0]).parts):
        if rel.endswith(".py") and "__pycache__" not in rel and not rel.startswith(exclude):
            h.update(rel.encode() + b"\0" + data + b"\0")
    return h.hexdigest()


def _scope_statement(source: bytes) -> ast.Assign | ast.AnnAssign | None:
    """The module-level ``NOT_TRAINING_CODE = ...`` statement of ``source``, when it has lines of its own."""
    try:
        body = ast.parse(source).body
    except (SyntaxError, ValueError):
        return None
    for i, node in enumerate(body):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) \
            else []
        if any(isinstance(t, ast.Name) and t.id == "NOT_TRAINING_CODE" for t in targets):
            shares = (i > 0 and body[i - 1].end_lineno >= node.lineno) or \
                     (i + 1 < len(body) and body[i + 1].lineno <= node.end_lineno)
            return None if shares else node  # on a line with other code: not left aside (compared whole)
    return None


def scope_of(files: dict[str, bytes]) -> tuple[str, ...] | None:
    """The ``NOT_TRAINING_CODE`` that ``files`` define (a literal tuple), None when none does."""
    for name in SCOPE_FILES:
        node = _scope_statement(files[name]) if name in files else None
        if node is not None and node.value is not None:
            try:
                value = ast.literal_eval(node.value)
            except ValueError:  # not a literal: what it leaves out cannot be read without running it
                return None
            return tuple(value) if isinstance(value, (tuple, list)) and all(isinstance(v, str) for v in value) \
                else None
    return None


def without_scope(rel: str, source: bytes) -> bytes:
    """``source`` without its ``NOT_TRAINING_CODE`` statement when ``rel`` is a scope file."""
    node = _scope_statement(source) if rel in SCOPE_FILES else None
    if node is None:
        return source
    lines = source.splitlines(keepends=True)
    return b"".join(lines[:node.lineno - 1] + lines[node.end_lineno:])


def training_files(files: dict[str, bytes], exclude: tuple[str, ...]) -> dict[str, bytes]:
    """The ``.py`` files of ``files`` inside the digest of scope ``exclude``, the scope statement left aside."""
    return {rel: without_scope(rel, data) for rel, data in files.items()
            if rel.endswith(".py") and "__pycache__" not in rel and not rel.startswith(exclude)}


def checkout_files(root: Path) -> dict[str, bytes]:
    """path -> content of the checkout's ``.py`` files under the packages (as code_digest reads them)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for pkg in PACKAGES for p in (root / pkg).rglob("*.py")}


def hashes_to(tree: GitTree, commit: str, code: str) -> str | None:
    """Why ``commit``'s files do not hash to ``code`` under the scope ``commit`` defines (check
    2); None when they do."""
    files = tree.files(commit)
    if files is None:
        return f"commit {commit[:12]} is not in this repository"
    scope = scope_of(files)
    if scope is None:
        return f"commit {commit[:12]} defines no literal NOT_TRAINING_CODE in {' or '.join(SCOPE_FILES)}"
    if digest_sources(files.items(), scope) != code:
        return f"commit {commit[:12]} does not hash to code digest {code[:12]} (the run's tree differed from it)"
    return None


def changed_since(tree: GitTree, commit: str, now: dict[str, bytes]) -> list[str]:
    """The files inside this checkout's digest whose content differs between ``commit`` and
    ``now`` (check 3), and those ``commit``'s scope left out: the runs' digest never covered
    them (a narrowed scope), so their versions in ``commit`` prove nothing of the runs'."""
    files = tree.files(commit) or {}
    scope = scope_of(files) or ()
    then = training_files(files, NOT_TRAINING_CODE)
    return sorted(rel for rel in then.keys() | now.keys() if then.get(rel) != now.get(rel) or rel.startswith(scope))


def prove(tree: GitTree, code: str, own: str, others: list[str], now: dict[str, bytes]
          ) -> tuple[str | None, str | None]:
    """(the commit that proves code digest ``code`` to be the training code ``now``, None) or
    (None, why not). The run's own commit ``own`` decides when git has it and the run's tree was
    clean (no ``+dirty``): a clean commit that does not hash to ``code`` says the code changed
    while the sweep ran. Otherwise (lost: amended, never pushed; or dirty) the first of
    ``others`` (other runs' commits of the same code digest) that hashes to ``code`` decides:
    the digest hashes every file of its scope, path and content, so any commit that reproduces
    it holds the very files the run executed."""
    clean = own.removesuffix("+dirty")
    if clean == own and tree.files(own) is not None:
        candidates = [own]
    else:
        candidates = [c for c in dict.fromkeys([clean, *others]) if not c.endswith("+dirty")]
    misses = []
    for commit in candidates:
        why = hashes_to(tree, commit, code)
        if why:
            misses.append(why)
            continue
        changed = changed_since(tree, commit, now)
        if changed:
            return None, f"training code changed since {commit[:12]}: {', '.join(changed[:5])}" + \
                (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        return commit, None
    return None, "; ".join(misses) or f"no commit that git has of code digest {code[:12]} (a shallow clone? " \
                                      f"fetch the history)"


def keyed_on(line: dict) -> tuple[str, str]:
    """(code digest, commit) the line's digest was computed with: its last rekey's, else its run's."""
    r = line.get("rekeyed") or line
    return r.get("code_digest") or "", r.get("commit") or ""


def rekey(profile: Profile, params: Params, lines: list[dict], repo: Path, *, code: str | None = None,
          tree: GitTree | None = None, root: Path | None = None) -> RekeyOutcome:
    """The ledger ``lines`` with each provably unchanged run's line given this checkout's digest
    (module docstring); ``code``, ``root``: this checkout's code digest and root (default: the
    running one's). DataError when HEAD does not hold this checkout's training code: a rekeyed
    line records HEAD as the commit of its new key, so commit the training code first."""
    root = root or Path(__file__).resolve().parent.parent.parent
    code = code or code_digest()
    tree = tree or GitTree(repo)
    head = tree.head()
    now = training_files(checkout_files(root), NOT_TRAINING_CODE)
    head_files = tree.files(head) or {}
    if digest_sources(head_files.items()) != code:
        raise DataError(root, f"the training code differs from HEAD ({head[:12]}); commit it before --rekey")
    matrix = {dataclasses.astuple(r): r for r in runs(profile)}
    current = digests(profile, params, code)
    under: dict[str, dict[Run, str]] = {}  # code digest -> the matrix's digests under it
    proofs: dict[tuple[str, str], tuple[str | None, str | None]] = {}  # (code, commit) -> prove()
    commits_of: dict[str, list[str]] = {}  # code digest -> the commits of the lines keyed on it
    for code_then, commit in map(keyed_on, lines):
        commits_of.setdefault(code_then, []).append(commit)
    taken = set(current.values()) & {line["digest"] for line in lines}  # runs whose current line is in
    out = RekeyOutcome(lines=[])
    for line in lines:
        run = matrix.get(run_key(line))
        if run is None:
            out.lines.append(line)
            continue
        if line["digest"] == current[run]:
            out.current.append(run.stage)
            out.lines.append(line)
            continue
        old_code, commit = keyed_on(line)
        if not old_code or not commit:
            out.refused[run.stage] = "the line records no code digest or commit"
            out.lines.append(line)
            continue
        if old_code not in under:
            under[old_code] = digests(profile, params, old_code)
        proof, why = None, None
        if current[run] in taken:
            why = "another line of this run already holds this checkout's digest"
        elif under[old_code][run] != line["digest"]:
            why = "its config, hyper-parameters, data recipe or teacher differ from this checkout's (retrain it)"
        else:
            if (old_code, commit) not in proofs:
                proofs[(old_code, commit)] = prove(tree, old_code, commit, commits_of[old_code], now)
            proof, why = proofs[(old_code, commit)]
        if why:
            out.refused[run.stage] = why
            out.lines.append(line)
            continue
        teacher = None if run.method == "teacher" else current[run.teacher]
        out.lines.append({**line, "digest": current[run], "teacher_digest": teacher,
                          "rekeyed": {"from": line["digest"], "code_digest": code, "commit": head, "proof": proof,
                                      "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}})
        out.rekeyed.append(run.stage)
        taken.add(current[run])
    return out


def rekey_ledger(profile: Profile, params: Params, repo: Path, *, write: bool = True, **kw) -> RekeyOutcome:
    """:func:`rekey` on ``profile``'s ledger, written back atomically when ``write`` and a line changed."""
    ledger = Ledger(profile.ledger)
    result = rekey(profile, params, ledger.lines, repo, **kw)
    if write and result.rekeyed:
        ledger.replace(result.lines)
    return result
