"""`lix sweep --profile P --rekey` (lix.sweep.rekey): a ledger line gets this checkout's digest
only when its run provably trains as this checkout would. A toy git repository stands for the
project's history: a commit whose digest scope (NOT_TRAINING_CODE) was narrower, then HEAD with
the scope widened and an edit in the newly left-out part. Golden digests are computed here with
hashlib, in an order written out by hand."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from lix.provenance import NOT_TRAINING_CODE, code_digest
from lix.sweep.ledger import Ledger
from lix.sweep.profile import Profile, digests, runs, write_params
from lix.sweep.rekey import (
    GitTree,
    checkout_files,
    digest_sources,
    prove,
    rekey,
    scope_of,
    training_files,
    without_scope,
)
from pipeline.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
OLD_SCOPE = ("lix/sweep",)
PROVENANCE = 'import os\n\n\nNOT_TRAINING_CODE = (\n    {scope}\n)\n\n\ndef where():\n    return os.getcwd()\n'


def _sha(pairs: list[tuple[str, bytes]]) -> str:
    h = hashlib.sha256()
    for rel, data in pairs:
        h.update(rel.encode() + b"\0" + data + b"\0")
    return h.hexdigest()


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def _write(repo: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)


def _commit(repo: Path, message: str) -> str:
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message)
    return _git(repo, "rev-parse", "HEAD")


@pytest.fixture
def history(tmp_path):
    """(repo, the old commit, its recorded code digest): the old commit left out lix/sweep only;
    HEAD also leaves out the verdict, whose figures it edits."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    old_files = {"lix/__init__.py": "", "lix/provenance.py": PROVENANCE.format(scope='"lix/sweep",'),
                 "lix/train.py": "LR = 0.01\n", "lix/sweep/run.py": "JOBS = 1\n",
                 "lix/verdict/figures.py": "DPI = 100\n", "pipeline/__init__.py": "",
                 "pipeline/shards.py": "SIZE = 64\n"}
    _write(repo, old_files)
    old = _commit(repo, "old")
    # by hand: the files of the old scope in path-component order (lix/sweep left out)
    recorded = _sha([(rel, old_files[rel].encode()) for rel in (
        "lix/__init__.py", "lix/provenance.py", "lix/train.py", "lix/verdict/figures.py",
        "pipeline/__init__.py", "pipeline/shards.py")])
    scope = ", ".join(f'"{p}"' for p in NOT_TRAINING_CODE)
    _write(repo, {"lix/provenance.py": PROVENANCE.format(scope=scope), "lix/verdict/figures.py": "DPI = 200\n"})
    _commit(repo, "head: the verdict left out of the digest, and edited")
    return repo, old, recorded


def _now(repo: Path) -> dict[str, bytes]:
    return training_files(checkout_files(repo), NOT_TRAINING_CODE)


def test_digest_sources_hashes_path_and_content_in_path_component_order_and_matches_the_checkout():
    files = [("lix/a/x.py", b"1"), ("lix/a-b.py", b"2"), ("lix/sweep/s.py", b"3"), ("pipeline/p.py", b"4"),
             ("lix/notes.txt", b"5"), ("lix/__pycache__/c.py", b"6")]
    # "lix/a/x.py" before "lix/a-b.py": by components ("a" < "a-b.py"), not by string ("/" > "-")
    expected = _sha([("lix/a/x.py", b"1"), ("lix/a-b.py", b"2"), ("pipeline/p.py", b"4")])
    assert digest_sources(files, OLD_SCOPE) == expected
    assert digest_sources(checkout_files(ROOT).items()) == code_digest()


def test_the_scope_statement_is_read_and_left_aside():
    src = PROVENANCE.format(scope='"lix/sweep",\n    "lix/cli",').encode()
    assert scope_of({"lix/provenance.py": src}) == ("lix/sweep", "lix/cli")
    assert scope_of({"lix/train.py": src}) is None  # only the scope file defines it
    assert without_scope("lix/provenance.py", src) == b"import os\n\n\n\n\ndef where():\n    return os.getcwd()\n"
    assert without_scope("lix/train.py", src) == src
    assert scope_of({"lix/provenance.py": (ROOT / "lix/provenance.py").read_bytes()}) == NOT_TRAINING_CODE
    assert scope_of({"lix/provenance.py": b"A = ('x',)\nNOT_TRAINING_CODE = A + ('y',)\n"}) is None  # not a literal
    shared = b"X = 1; NOT_TRAINING_CODE = ('lix/sweep',)\n"  # on a line with other code: compared whole
    assert without_scope("lix/provenance.py", shared) == shared and scope_of({"lix/provenance.py": shared}) is None


def test_a_commit_that_hashes_to_the_recorded_digest_and_holds_todays_training_code_proves_it(history):
    repo, old, recorded = history
    tree = GitTree(repo)
    head = _git(repo, "rev-parse", "HEAD")
    assert prove(tree, recorded, old, [], _now(repo)) == (old, None)
    # a lost commit (amended, never pushed) or a dirty run's is proven through another of the same code digest
    lost = "0" * 40
    assert prove(tree, recorded, lost, [head, old], _now(repo)) == (old, None)
    assert prove(tree, recorded, old + "+dirty", [], _now(repo)) == (old, None)
    proof, why = prove(tree, recorded, lost, [], _now(repo))
    assert proof is None and "not in this repository" in why
    # a recorded digest the commit does not reproduce: the run's tree was not the commit's
    proof, why = prove(tree, "f" * 64, old, [], _now(repo))
    assert proof is None and "does not hash" in why
    # the run's own clean commit does not hash: the code changed while the sweep ran; no other commit may stand in
    proof, why = prove(tree, recorded, head, [old], _now(repo))
    assert proof is None and "does not hash" in why and head[:12] in why


def test_an_edit_inside_the_digest_since_the_commit_refuses_the_proof(history):
    repo, old, recorded = history
    _write(repo, {"lix/train.py": "LR = 0.02\n"})
    proof, why = prove(GitTree(repo), recorded, old, [], _now(repo))
    assert proof is None and "lix/train.py" in why
    _write(repo, {"lix/train.py": "LR = 0.01\n", "pipeline/new_step.py": "X = 1\n"})  # a new module counts too
    proof, why = prove(GitTree(repo), recorded, old, [], _now(repo))
    assert proof is None and "pipeline/new_step.py" in why


def test_a_file_the_runs_scope_left_out_but_todays_digest_covers_refuses_the_proof(history):
    repo, _, _ = history
    current = (repo / "lix/provenance.py").read_text()
    _write(repo, {"lix/provenance.py": PROVENANCE.format(scope='"lix/sweep", "lix/extra.py",'),
                  "lix/extra.py": "E = 1\n"})
    narrow = _commit(repo, "a scope that left lix/extra.py out")
    tree = GitTree(repo)
    recorded = digest_sources(tree.files(narrow).items(), ("lix/sweep", "lix/extra.py"))
    _write(repo, {"lix/provenance.py": current})  # today's scope covers lix/extra.py again: same content, unproven
    proof, why = prove(tree, recorded, narrow, [], _now(repo))
    assert proof is None and "lix/extra.py" in why


def _tiny_profile(tmp_path) -> Profile:
    return Profile(name="tiny", datasets=("vkitti2",), models=("mfnet",), methods=("student", "kd"), seeds=(0,),
                   set={"train.vkitti2.epochs": 3}, folder=tmp_path / "tiny")


def _matrix(history, tmp_path):
    """The toy history with a tiny profile: (repo, old commit, its code digest, profile, params,
    HEAD's code digest, the matrix's digests under the old code, under HEAD's)."""
    repo, old, recorded = history
    prof = _tiny_profile(tmp_path)
    params = write_params(prof, ROOT / "params.yaml", write=False)
    code = digest_sources(GitTree(repo).files(_git(repo, "rev-parse", "HEAD")).items())
    return repo, old, recorded, prof, params, code, digests(prof, params, recorded), digests(prof, params, code)


def test_rekey_gives_proven_lines_todays_digest_and_keeps_the_others(history, tmp_path):
    repo, old, recorded, prof, params, code, then, now = _matrix(history, tmp_path)
    matrix = runs(prof)
    lines = [{"digest": then[r], "dataset": r.dataset, "model": r.model, "method": r.method, "seed": r.seed,
              "teacher_digest": None if r.method == "teacher" else then[r.teacher], "code_digest": recorded,
              "commit": old, "metrics": {"miou": 0.5}} for r in matrix]
    lines[2]["digest"] = "a" * 64  # recorded under another config: its run must train again
    lines.append({"digest": "b" * 64, "dataset": "kitti", "model": "mfnet", "method": "kd", "seed": 9,
                  "code_digest": recorded, "commit": old})  # not in the matrix: passed through as is
    r = rekey(prof, params, lines, repo, code=code, tree=GitTree(repo), root=repo)
    assert r.rekeyed == [matrix[0].stage, matrix[1].stage] and list(r.refused) == [matrix[2].stage]
    assert "config" in r.refused[matrix[2].stage]
    for line, run in zip(r.lines[:2], matrix[:2]):
        assert line["digest"] == now[run] and line["code_digest"] == recorded and line["metrics"] == {"miou": 0.5}
        assert line["rekeyed"]["from"] == then[run] and line["rekeyed"]["code_digest"] == code
        assert line["rekeyed"]["proof"] == old
    assert r.lines[1]["teacher_digest"] == now[matrix[0]]
    assert r.lines[2] == lines[2] and r.lines[3] == lines[3]
    # a second rekey finds them current
    again = rekey(prof, params, r.lines, repo, code=code, tree=GitTree(repo), root=repo)
    assert again.rekeyed == [] and again.current == [matrix[0].stage, matrix[1].stage]
    # a second scope change: lines keyed on a rekey start from its code digest and commit
    head1 = _git(repo, "rev-parse", "HEAD")
    wider = ", ".join(f'"{p}"' for p in (*NOT_TRAINING_CODE, "lix/zzz"))
    _write(repo, {"lix/provenance.py": PROVENANCE.format(scope=wider)})
    head2 = _commit(repo, "the scope widened again")
    code2 = digest_sources(GitTree(repo).files(head2).items())
    assert code2 != code
    third = rekey(prof, params, r.lines, repo, code=code2, tree=GitTree(repo), root=repo)
    assert third.rekeyed == [matrix[0].stage, matrix[1].stage]
    assert [ln["rekeyed"]["proof"] for ln in third.lines[:2]] == [head1, head1]
    assert third.lines[1]["digest"] == digests(prof, params, code2)[matrix[1]]


def test_rekey_proves_a_lost_commit_through_another_line_and_never_makes_two_lines_share_a_digest(history, tmp_path):
    repo, old, recorded, prof, params, code, then, now = _matrix(history, tmp_path)
    teacher, student = runs(prof)[:2]

    def line(run, digest, commit):
        return {"digest": digest, "dataset": run.dataset, "model": run.model, "method": run.method,
                "seed": run.seed, "code_digest": recorded, "commit": commit}

    lines = [line(teacher, then[teacher], "0" * 40 + "+dirty"), line(student, then[student], old)]
    r = rekey(prof, params, lines, repo, code=code, tree=GitTree(repo), root=repo)
    assert r.rekeyed == [teacher.stage, student.stage] and r.lines[0]["rekeyed"]["proof"] == old
    # the teacher retrained under today's code beside its old line: the old line is kept, not given the same digest
    lines = [line(teacher, now[teacher], old), line(teacher, then[teacher], old)]
    r = rekey(prof, params, lines, repo, code=code, tree=GitTree(repo), root=repo)
    assert r.current == [teacher.stage] and "another line" in r.refused[teacher.stage]
    Ledger(tmp_path / "l.jsonl").replace(r.lines)  # two distinct digests: writable
    # a line without code digest or commit is kept with the reason
    r = rekey(prof, params, [{"digest": "z", "dataset": teacher.dataset, "model": teacher.model,
                              "method": teacher.method, "seed": teacher.seed}], repo, code=code,
              tree=GitTree(repo), root=repo)
    assert "no code digest" in r.refused[teacher.stage]


def test_rekey_refuses_a_checkout_whose_training_code_is_not_committed(history, tmp_path):
    repo, _, _ = history
    prof = _tiny_profile(tmp_path)
    params = write_params(prof, ROOT / "params.yaml", write=False)
    _write(repo, {"lix/train.py": "LR = 0.5\n"})
    code = digest_sources(checkout_files(repo).items())
    with pytest.raises(DataError, match="commit it before --rekey"):
        rekey(prof, params, [], repo, code=code, tree=GitTree(repo), root=repo)


def test_ledger_replace_writes_the_whole_file_and_refuses_duplicate_digests(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    ledger.append({"digest": "a", "x": 1})
    ledger.append({"digest": "b", "x": 2})
    ledger.replace([{"digest": "c", "x": 1}, {"digest": "b", "x": 2}])
    assert Ledger(tmp_path / "ledger.jsonl").lines == [{"digest": "c", "x": 1}, {"digest": "b", "x": 2}]
    with pytest.raises(ValueError, match="share a digest"):
        ledger.replace([{"digest": "c"}, {"digest": "c"}])
    assert len(Ledger(tmp_path / "ledger.jsonl").lines) == 2


def test_the_cli_rekey_needs_a_profile():
    from typer.testing import CliRunner

    from lix.cli import app

    res = CliRunner().invoke(app, ["sweep", "--rekey"])
    assert res.exit_code != 0 and "--rekey" in (res.output + str(res.exception))
