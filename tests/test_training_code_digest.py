"""The training-code digest (lix.provenance.code_digest) leaves out NOT_TRAINING_CODE, the files
a training run never executes, so that an edit to the report or the sweep does not make a
running matrix's runs stale. That only holds if no file inside the digest imports one outside
it: checked here on the source (ast), without importing anything."""

from __future__ import annotations

import ast
from pathlib import Path

from lix.provenance import NOT_TRAINING_CODE, code_digest

ROOT = Path(__file__).resolve().parent.parent
# lix/config.py reads the ``slurm`` section of params.yaml with lix/config_slurm.py's dataclass:
# the section says where jobs are queued, never what they train.
ALLOWED = {("lix/config.py", "lix.config_slurm")}


def _excluded(module: str) -> bool:
    path = module.replace(".", "/")
    return any(path == p.rstrip("/").removesuffix(".py") or path.startswith(p.rstrip("/").removesuffix(".py") + "/")
               for p in NOT_TRAINING_CODE)


def _excluded_imports(source: str) -> list[str]:
    """The modules left out of the digest that ``source`` imports (``from lix import verdict``
    names lix.verdict)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names if _excluded(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if _excluded(node.module):
                out.append(node.module)
            else:
                out += [f"{node.module}.{a.name}" for a in node.names if _excluded(f"{node.module}.{a.name}")]
    return out


def test_no_training_module_imports_a_module_left_out_of_the_digest():
    offenders = []
    for package in ("lix", "pipeline"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if "__pycache__" in rel or rel.startswith(NOT_TRAINING_CODE):
                continue
            offenders += [(rel, m) for m in _excluded_imports(path.read_text()) if (rel, m) not in ALLOWED]
    assert offenders == []
    assert _excluded_imports("from lix import verdict\nimport lix.sweep.ledger\nfrom lix.train import fit\n") \
        == ["lix.verdict", "lix.sweep.ledger"]


def test_the_exclusions_name_real_files_and_the_verdict_is_among_them():
    for prefix in NOT_TRAINING_CODE:
        assert (ROOT / prefix).exists(), prefix
    assert _excluded("lix.verdict.markdown") and _excluded("lix.sweep.ledger") and not _excluded("lix.train")


def test_an_edit_outside_the_digest_leaves_it_and_one_inside_changes_it(tmp_path, monkeypatch):
    import lix.provenance as prov

    for package in ("lix", "pipeline"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "lix" / "provenance.py").write_text("")
    (tmp_path / "lix" / "verdict").mkdir()
    (tmp_path / "lix" / "verdict" / "figures.py").write_text("A = 1\n")
    (tmp_path / "lix" / "train.py").write_text("B = 1\n")
    monkeypatch.setattr(prov, "__file__", str(tmp_path / "lix" / "provenance.py"))
    import pipeline

    monkeypatch.setattr(pipeline, "__file__", str(tmp_path / "pipeline" / "__init__.py"))
    before = prov.code_digest()
    (tmp_path / "lix" / "verdict" / "figures.py").write_text("A = 2\n")
    assert prov.code_digest() == before
    (tmp_path / "lix" / "train.py").write_text("B = 2\n")
    assert prov.code_digest() != before
    assert code_digest() != before  # the real checkout's differs from the toy's
