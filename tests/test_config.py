"""params.yaml loads into typed, validated dataclasses."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from lix.config import DATASETS, Params, load_params
from pipeline.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_params_load():
    p = load_params(ROOT / "params.yaml")
    assert isinstance(p, Params)
    assert {d: p.splits[d].ratio for d in DATASETS} == {"vkitti2": (5, 2), "kitti": (3, 1), "nuimages": (7, 3)}
    assert {d: p.splits[d].n_images for d in DATASETS} == {"vkitti2": 700, "kitti": 200, "nuimages": 800}
    assert {d: p.synthetic[d].n_images for d in DATASETS} == {"vkitti2": 700, "kitti": 200, "nuimages": 800}
    assert all(p.download[d].source == "synthetic" for d in DATASETS)


def _load(tmp_path, text):
    f = tmp_path / "params.yaml"
    f.write_text(text)
    return load_params(f)


@pytest.mark.parametrize("text,key,problem", [
    ("splits:\n  kitti: {n_image: 3}\n", "splits.kitti.n_image", "unknown key"),
    ("splits:\n  kitty: {n_images: 3}\n", "splits", "unknown dataset"),
    ("bogus: 1\n", "bogus", "unknown key"),
    ("splits:\n  kitti: {n_images: three}\n", "splits.kitti.n_images", "expected int"),
    ("splits:\n  kitti: {n_images: true}\n", "splits.kitti.n_images", "expected int"),
    ("splits:\n  kitti: {ratio: [3, 1, 1]}\n", "splits.kitti.ratio", "list of 2 values"),
    ("splits:\n  kitti: {n_images: 1}\n", "splits.kitti.n_images", "must be >= 2"),
    ("synthetic:\n  vkitti2: {variations: [snow]}\n", "synthetic.vkitti2.variations", "unknown ['snow']"),
    ("synthetic:\n  kitti: {width: 8}\n", "synthetic.kitti.width", "must be in [16, 4096]"),
    ("download:\n  kitti: {source: ftp}\n", "download.kitti.source", "one of 'synthetic', 'url', 'local'"),
    ("download:\n  nuimages: {source: local}\n", "download.nuimages.local_path", "required"),
    ("download:\n  kitti: {sha256: {a.zip: xyz}}\n", "download.kitti.sha256.a.zip", "64 hex digits"),
    ("depth:\n  kitti: {max_depth: 300.0}\n", "depth.kitti.max_depth", "the depth PNG's range"),
    ("splits:\n  vkitti2: {group_by: layout}\n", "splits.vkitti2.group_by", "one of 'none', 'frame', 'scene'"),
    ("normals:\n  kitti: {estimator: sobel}\n", "normals.kitti.estimator", "one of 'sne', 'median4'"),
    ("datasets: [kitti, cityscapes]\n", "datasets", "unknown dataset(s) ['cityscapes']"),
])
def test_invalid_values_name_the_key(tmp_path, text, key, problem):
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, text)
    assert e.value.key == key
    assert problem in e.value.problem


def test_partial_sections_keep_defaults(tmp_path):
    p = _load(tmp_path, "splits:\n  kitti: {n_images: 10}\n")
    assert p.splits["kitti"].n_images == 10 and p.splits["kitti"].ratio == (3, 1)
    assert set(p.splits) == set(DATASETS)


def test_params_are_frozen():
    p = Params()
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.splits["kitti"].n_images = 3  # type: ignore[misc]


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(DataError, match="parameter file not found"):
        load_params(tmp_path / "none.yaml")
    with pytest.raises(DataError, match="not valid YAML"):
        _load(tmp_path, "a: [1,\n")


# Options that only one dataset's reader or renderer takes.
ONLY_FOR = {("synthetic", "variations"): {"vkitti2"}, ("reader", "variations"): {"vkitti2"},
            ("reader", "version"): {"nuimages"}, ("reader", "channels"): {"nuimages"}}


def test_params_yaml_writes_out_every_key():
    """DVC tracks params.yaml, not the dataclass defaults: every key a stage reads is written out."""
    import dataclasses

    import yaml

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    p = load_params(ROOT / "params.yaml")
    for section in ("synthetic", "download", "reader", "splits", "depth", "normals", "shards", "train"):
        for d in p.datasets:
            fields = {f.name for f in dataclasses.fields(getattr(p, section)[d])}
            wanted = {f for f in fields if d in ONLY_FOR.get((section, f), {d})}
            assert set(raw[section][d]) == wanted, f"{section}.{d}: missing {sorted(wanted - set(raw[section][d]))}"
    assert set(raw["distill"]) == {f.name for f in dataclasses.fields(p.distill)}
    assert set(raw["sweep"]) == {f.name for f in dataclasses.fields(p.sweep)}
    assert set(raw["sweep"]["slurm"]) == {f.name for f in dataclasses.fields(p.sweep.slurm)}


def test_distill_section_lists_every_registered_method():
    """Each method has its own hyper entry (plus the plain student's, empty), so
    `-S sweep.methods=[...]` runs any of them and its DVC stage depends on its own key; the
    entries are valid hyper-parameters of the method."""
    from lix.config import PLAIN_STUDENT
    from lix.distill import DISTILLERS, hyper_defaults
    p = load_params(ROOT / "params.yaml")
    assert set(p.distill.hyper) == set(DISTILLERS) | {PLAIN_STUDENT}
    assert p.distill.hyper[PLAIN_STUDENT] == {}
    for method, hyper in p.distill.hyper.items():
        if method != PLAIN_STUDENT:
            assert set(hyper) <= set(hyper_defaults(method)) | {"taps"}, method


def _write_params(tmp_path, edit):
    import yaml

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    edit(raw)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path / "params.yaml"


def test_sweep_methods_and_ablations_need_their_hyper_entry(tmp_path):
    def methods(raw):
        raw["sweep"]["methods"] = ["student", "lix", "kd"]
        del raw["distill"]["hyper"]["kd"]

    from lix.validate import check_params

    with pytest.raises(ConfigError, match=r"distill\.hyper.*missing: \['kd'\]"):
        check_params(load_params(_write_params(tmp_path, methods)))

    def ablations(raw):
        raw["sweep"]["ablations"] = ["dkd~beta=2"]
        del raw["distill"]["hyper"]["dkd"]

    with pytest.raises(ConfigError, match=r"distill\.hyper.*missing: \['dkd'\]"):
        check_params(load_params(_write_params(tmp_path, ablations)))


@pytest.mark.parametrize("edit, key, problem", [
    # a misspelt name is unknown, not a missing entry (even with the entry added)
    (lambda raw: raw["sweep"].update(methods=["student", "lixx"]), r"sweep\.methods", "unknown distillation method"),
    (lambda raw: (raw["sweep"].update(methods=["student", "lixx"]), raw["distill"]["hyper"].update(lixx={})),
     r"sweep\.methods", "unknown distillation method 'lixx'"),
    (lambda raw: raw["sweep"].update(models=["mfnett"]), r"sweep\.models", "unknown model 'mfnett'"),
    (lambda raw: (raw["sweep"].update(models=["mfnett"]), raw["arch"].update(mfnett={})),
     r"sweep\.models", "unknown model"),
    (lambda raw: raw["distill"]["hyper"].update(kd={"temperature": "hot"}), r"distill\.hyper\.kd\.temperature",
     "expected a number"),
    (lambda raw: raw["distill"]["hyper"].update(kd={"w_kd": "abc"}), r"distill\.hyper\.kd\.w_kd", "expected a number"),
    (lambda raw: raw["distill"]["hyper"].update(lix={"dwc_hidden": 2.5}), r"distill\.hyper\.lix\.dwc_hidden",
     "expected an integer"),
    (lambda raw: raw["distill"]["hyper"].update(kd={"temprature": 2}), r"distill\.hyper\.kd\.temprature",
     "unknown hyper-parameter"),
    (lambda raw: raw["sweep"].update(ablations=["dkd~beta=high"]), r"sweep\.ablations\[dkd~beta=high\]\.beta",
     "expected a number"),
    (lambda raw: raw["sweep"].update(methods=["student", "../../etc"]), r"sweep\.methods", "not a safe name"),
    (lambda raw: raw["sweep"].update(methods=["student", "a/b"]), r"sweep\.methods", "not a safe name"),
    (lambda raw: raw["sweep"].update(ablations=["lix~beta=2/x"]), r"sweep\.ablations", "not a safe name"),
])
def test_names_and_hyper_parameters_are_checked_against_the_registries(tmp_path, edit, key, problem):
    """What check-params, lix sweep, lix train and lix distill check before touching anything:
    the names against the registries (a typo is 'unknown', not 'missing an entry'), the
    hyper-parameters' keys and types, and names that become directories."""
    from lix.validate import check_params

    with pytest.raises(ConfigError, match=key) as e:
        check_params(load_params(_write_params(tmp_path, edit)))
    assert problem in str(e.value)


@pytest.mark.parametrize("bad, key", [("lix~", "sweep.ablations"), ("lix", "sweep.ablations"),
                                      ("student~beta=2", "sweep.ablations")])
def test_malformed_ablations_are_refused(tmp_path, bad, key):
    def edit(raw):
        raw["sweep"]["ablations"] = [bad]

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_params(_write_params(tmp_path, edit))


def test_variant_names_parse_to_typed_hyper_parameters():
    from lix.config import parse_variant, variant_hyper

    assert variant_hyper("lix~controller=fixed,beta=4") == ("lix", {"controller": "fixed", "beta": 4})
    assert variant_hyper("arfd~bandwidth=0.5,exact_distances=true") == ("arfd", {"bandwidth": 0.5,
                                                                                 "exact_distances": True})
    assert parse_variant("kd") == ("kd", {})
    for bad in ("lix~beta", "~beta=2", "lix~beta=2,beta=3"):
        with pytest.raises(ValueError):
            parse_variant(bad)


def test_arch_overrides_apply_per_model_and_are_checked(tmp_path):
    p = load_params(ROOT / "params.yaml")
    sne = p.train_config("kitti", "sne_roadseg", seed=3)
    assert (sne.model, sne.batch_size, sne.schedule, sne.seed) == ("sne_roadseg", p.arch["sne_roadseg"]["batch_size"],
                                                                   "sne_roadseg", 3)
    assert p.train_config("kitti") == p.train["kitti"]
    # the paper's SNE-RoadSeg batch: 3 on vKITTI2 and KITTI, 8 on nuImages (arch.<model>.<dataset>)
    assert [p.train_config(ds, "sne_roadseg").batch_size for ds in ("vkitti2", "kitti", "nuimages")] == [3, 3, 8]
    assert p.train_config("nuimages", "sne_roadseg").lr == p.arch["sne_roadseg"]["lr"]

    def per_dataset_unknown(raw):
        raw["arch"]["mfnet"] = {"nuimages": {"batchsize": 4}}

    with pytest.raises(ConfigError, match=r"arch\.mfnet\.nuimages\.batchsize"):
        load_params(_write_params(tmp_path, per_dataset_unknown))

    def unknown(raw):
        raw["arch"]["mfnet"] = {"batchsize": 4}

    with pytest.raises(ConfigError, match=r"arch\.mfnet\.batchsize"):
        load_params(_write_params(tmp_path, unknown))

    def bad_value(raw):
        raw["arch"]["mfnet"] = {"batch_size": 0}

    with pytest.raises(ConfigError, match=r"arch\.mfnet\.batch_size"):
        load_params(_write_params(tmp_path, bad_value)).train_config("kitti", "mfnet")

    def missing(raw):
        raw["sweep"]["models"] = ["mfnet", "sne_roadseg"]
        del raw["arch"]["sne_roadseg"]

    from lix.validate import check_params

    with pytest.raises(ConfigError, match=r"arch.*missing: \['sne_roadseg'\]"):
        check_params(load_params(_write_params(tmp_path, missing)))


def test_backend_defaults_agree_with_depth_config():
    import inspect

    from lix.config import DepthConfig
    from pipeline.depth.base import BACKENDS
    from pipeline.depth.select import backend_options

    cfg = DepthConfig()
    for name in BACKENDS:
        sig = inspect.signature(BACKENDS[name].__init__).parameters
        try:
            opts = backend_options(name, cfg, type("R", (), {"GROUND_CLASSES": ()})())
        except KeyError:
            continue
        for key, value in opts.items():
            if key in sig and sig[key].default is not inspect.Parameter.empty and key != "ground_classes":
                assert sig[key].default == value, \
                    f"{name}.{key}: backend default {sig[key].default!r}, config {value!r}"


def test_every_hyper_parameter_is_written_out_with_its_default():
    """So that `dvc exp run -S distill.hyper.<method>.<key>=...` finds the key (DVC refuses a
    new one), and the file says what a run uses."""
    from lix.config import PLAIN_STUDENT
    from lix.distill import hyper_defaults

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for method, hyper in raw["distill"]["hyper"].items():
        assert hyper == ({} if method == PLAIN_STUDENT else hyper_defaults(method)), method


def _changed(before: dict, after: dict, prefix: str = "") -> dict:
    """{dotted key: new value} of the leaves that differ between two parsed params files."""
    out = {}
    for k in sorted(set(before) | set(after), key=str):
        a, b = before.get(k), after.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out.update(_changed(a, b, f"{prefix}{k}."))
        elif a != b:
            out[f"{prefix}{k}"] = b
    return out


def test_dvcs_set_param_rewrites_only_the_value_it_sets(tmp_path):
    """DVC's -S (dvc.utils.serialize.modify_yaml, the round-trip `dvc exp run -S` goes through)
    and `lix sweep -S` round-trip params.yaml through ruamel; its layout must survive that, and a
    key set on a dataset that merges the shared values (`<<: *train`) lands on that dataset only."""
    from dvc.utils.serialize import modify_yaml

    from lix.sweep import set_params

    text = (ROOT / "params.yaml").read_text()
    original, values = text.splitlines(), yaml.safe_load(text)
    wanted = {"distill.hyper.lix.w_dwld": 0.5, "train.kitti.epochs": 5}
    path = tmp_path / "params.yaml"

    def check_layout():
        new = path.read_text().splitlines()
        assert len(new) == len(original)
        changed = [b.strip() for a, b in zip(original, new) if a != b]
        assert len(changed) == 2 and changed[1] == "w_dwld: 0.5", changed
        assert changed[0].startswith("kitti: {<<: *train") and "epochs: 5" in changed[0], changed
        assert _changed(values, yaml.safe_load(path.read_text())) == wanted

    path.write_text(text)
    with modify_yaml(str(path)) as data:
        data["distill"]["hyper"]["lix"]["w_dwld"] = 0.5
        data["train"]["kitti"]["epochs"] = 5
    check_layout()
    path.write_text(text)
    set_params(path, ["distill.hyper.lix.w_dwld=0.5", "train.kitti.epochs=5"])
    check_layout()
    # `dvc exp run -S` itself (dvc.utils.hydra.apply_overrides) writes every merged key out into
    # each dataset's mapping: the layout grows, the values are exactly the ones set (README: Parameters)
    from dvc.utils.hydra import apply_overrides

    path.write_text(text)
    apply_overrides(str(path), [f"{k}={v}" for k, v in wanted.items()])
    assert _changed(values, yaml.safe_load(path.read_text())) == wanted


def test_the_anchor_holder_is_no_section(tmp_path):
    """params.yaml's `defaults` only holds the anchors the dataset sections merge: load_params
    drops it (it needs no dataclass), and no DVC stage depends on it (its values reach each stage
    through the merged sections, which the stages list)."""
    from lix.config import ANCHORS_KEY

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert set(raw[ANCHORS_KEY]) <= {"depth", "shards", "train"}
    for section, shared in raw[ANCHORS_KEY].items():
        for d in DATASETS:  # every shared key reaches every dataset (or is overridden there)
            assert set(shared) <= set(raw[section][d]), (section, d)
    assert ANCHORS_KEY not in (ROOT / "dvc.yaml").read_text()
    p = _load(tmp_path, "defaults:\n  train: {lr: 7.0}\n")
    assert p.train["kitti"].lr == 0.01  # not merged anywhere: read by nothing
    with pytest.raises(ConfigError, match="defaults"):
        _load(tmp_path, "defaults: 3\n")
