"""The shape of the code, measured from its imports (tests/import_graph.py reads the source with `ast`;
imports inside functions count): no import circle, no import from a lower layer of a higher one, no
private name borrowed from another module, no module of lix/ over 500 lines, and pipeline/ (data
preparation) never imports lix/ (training)."""

from __future__ import annotations

import import_graph as ig

# Lowest first. A module belongs to the layer of the longest prefix that names it; it may import
# its own layer and the ones below, never one above.
LAYERS: list[tuple[str, ...]] = [
    # what every part shares: errors, atomic writes, the registry class, constants, the device rule
    ("pipeline.constants", "pipeline.errors", "pipeline.atomic", "pipeline.registry", "pipeline.device"),
    ("pipeline",),  # data preparation: readers, depth, normals, splits, shards
    ("lix", "lix.layout", "lix.runtime", "lix.reduce"),  # the trainer's own core
    ("lix.models", "lix.metrics", "lix.inputs", "lix.config", "lix.config_schema", "lix.config_slurm",
     "lix.checkpoint", "lix.data"),
    ("lix.losses",),  # pure functions
    ("lix.train", "lix.provenance", "lix.loaders", "lix.model_factory", "lix.evaluate"),  # the supervised loop
    ("lix.distill", "lix.validate"),  # the method contract, the methods, distillation with the loop
    ("lix.predict", "lix.cross_dataset"),
    ("lix.report", "lix.verdict"),
    ("lix.sweep",),
    ("lix.cli",),
]


def test_no_import_circles():
    cyc = ig.cycles(ig.graph(ig.imports()))
    assert not cyc, "import circles:\n" + "\n".join(" <-> ".join(c) for c in cyc)


def test_no_import_from_a_lower_layer_of_a_higher_one():
    found = ig.imports()
    unplaced = sorted({m for i in found for m in (i.source, i.target) if ig.layer_of(m, LAYERS) < 0})
    assert not unplaced, f"modules in no layer (add them to LAYERS): {unplaced}"
    up = sorted({f"{i.source}:{i.line} (layer {ig.layer_of(i.source, LAYERS)}) imports {i.target} "
                 f"(layer {ig.layer_of(i.target, LAYERS)})" for i in ig.upward_imports(found, LAYERS)})
    assert not up, "upward imports:\n" + "\n".join(up)


def test_pipeline_imports_nothing_from_lix():
    bad = [i for i in ig.imports() if i.source.startswith("pipeline") and i.target.split(".")[0] == "lix"]
    assert not bad, [f"{i.source}:{i.line} -> {i.target}" for i in bad]


def test_no_private_name_is_imported_from_another_module():
    bad = ig.private_imports(ig.imports())
    assert not bad, [f"{i.source}:{i.line} takes {i.names} from {i.target}" for i in bad]


def test_no_module_of_lix_is_over_500_lines():
    assert not ig.long_files(500, "lix"), ig.long_files(500, "lix")


def test_the_graph_reader_sees_imports_inside_functions(tmp_path, monkeypatch):
    """The reader itself: a lazy import inside a function closes a circle, a relative import resolves."""
    for rel, text in {"pipeline/__init__.py": "", "pipeline/a.py": "from pipeline.b import x\n",
                      "pipeline/b.py": "def f():\n    from . import a\n", "lix/__init__.py": "",
                      "lix/c.py": "from pipeline.a import _hidden\n"}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    monkeypatch.setattr(ig, "ROOT", tmp_path)
    found = ig.imports()
    assert ig.cycles(ig.graph(found)) == [["pipeline.a", "pipeline.b"]]
    assert [(i.source, i.names) for i in ig.private_imports(found)] == [("lix.c", ("_hidden",))]
    assert [i.source for i in ig.upward_imports(found, [("lix",), ("pipeline",)])] == ["lix.c"]
