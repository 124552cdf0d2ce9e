"""params.yaml as frozen dataclasses.

Each section is a dataclass with defaults. :func:`load_params` checks every key against
the dataclass fields: an unknown key, a value of the wrong type, or a value out of range
fails with one :class:`ConfigError` naming the full key path (``splits.kitti.ratio``) and
what is allowed.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from lix.config_schema import from_dict, require
from lix.config_slurm import SlurmConfig
from pipeline.datasets import DATASETS, VKITTI2_VARIATIONS
from pipeline.errors import ConfigError, DataError

_require = require


# --------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class SyntheticConfig:
    """The built-in synthetic miniature of one dataset."""

    n_images: int = 200
    width: int = 320
    height: int = 96
    seed: int = 0
    variations: tuple[str, ...] = ("clone",)  # vKITTI2 only

    def __post_init__(self):
        _require(self.n_images >= 1, "n_images", f"must be >= 1, got {self.n_images}")
        _require(16 <= self.width <= 4096, "width", f"must be in [16, 4096], got {self.width}")
        _require(16 <= self.height <= 4096, "height", f"must be in [16, 4096], got {self.height}")
        _require(len(self.variations) >= 1, "variations", "must name at least one variation")
        bad = [v for v in self.variations if v not in VKITTI2_VARIATIONS]
        _require(not bad, "variations", f"unknown {bad}; allowed: {list(VKITTI2_VARIATIONS)}")


@dataclass(frozen=True)
class DownloadConfig:
    """Where a dataset comes from: the synthetic default, the public URLs, or local files."""

    source: Literal["synthetic", "url", "local"] = "synthetic"
    local_path: Optional[str] = None
    mirror: Optional[str] = None  # base URL or directory holding the archives under their own names
    sha256: dict[str, str] = field(default_factory=dict)  # archive file name -> expected digest

    def __post_init__(self):
        _require(self.source != "local" or self.local_path is not None, "local_path",
                 "required when source is 'local' (a directory or an archive)")
        for name, digest in self.sha256.items():
            _require(len(digest) == 64 and all(c in "0123456789abcdef" for c in digest.lower()),
                     f"sha256.{name}", f"must be 64 hex digits, got {digest!r}")


@dataclass(frozen=True)
class ReaderConfig:
    """Dataset-specific reading options."""

    variations: Optional[tuple[str, ...]] = None  # vKITTI2: restrict to these variations
    version: str = "v1.0-train"  # nuImages table version
    channels: Optional[tuple[str, ...]] = None  # nuImages: restrict to these cameras


@dataclass(frozen=True)
class SplitConfig:
    """Seeded random train/val split of ``n_images`` samples at ``ratio`` (train:val)."""

    n_images: int = 200
    ratio: tuple[int, int] = (3, 1)
    seed: int = 0
    # Samples that share a group never straddle the split: none | frame (vKITTI2: the weather
    # variations of one (scene, frame)) | scene (whole scenes / sequences / logs).
    group_by: Literal["none", "frame", "scene"] = "none"

    def __post_init__(self):
        _require(self.n_images >= 2, "n_images", f"must be >= 2, got {self.n_images}")
        _require(all(r >= 1 for r in self.ratio), "ratio", f"both parts must be >= 1, got {list(self.ratio)}")


@dataclass(frozen=True)
class DepthConfig:
    """Dense depth for one dataset. ``backend`` is a registered name or 'auto' (the learned
    model when its weights resolve, else the documented fallback; see pipeline.depth.select)."""

    backend: Literal["auto", "crestereo", "depth_anything", "sgbm", "ground_truth"] = "auto"
    hub: bool = False  # may 'auto' ask the Hugging Face hub? (off: resolve from local files only)
    device: str = "auto"
    batch_size: int = 4
    max_depth: float = 250.0
    crestereo_weights: Optional[str] = None  # path to a CREStereo checkpoint (.pth / .safetensors)
    iters: int = 20
    model: str = "depth-anything/Depth-Anything-V2-Small-hf"  # Hugging Face id
    model_path: Optional[str] = None  # a local directory with config.json and weights
    input_size: int = 518
    alignment: Literal["auto", "sparse", "ground"] = "auto"
    # sgbm (pipeline/depth/sgbm.py). Lengths in px are stated at 320 px image width and scaled
    # with the image (x width / 320), so one setting serves 320x96 and KITTI's 1242x375.
    max_disparity: int = 64  # sgbm search range, px at 320 px width (1242 px wide: 256 px)
    block_size: int = 5  # SGBM's matching window (px; per pixel at every size, it averages pixel noise)
    # sgbm post-processing: what SGBM did not measure stays invalid, except what the right
    # camera cannot see (sgbm_fill_occluded).
    sgbm_lr_max_diff: float = 1.0  # left-right consistency tolerance (px; sub-pixel noise, not scaled)
    sgbm_smoothing: float = 2000.0  # weight of the plane-preserving, edge-aware smoothing (per pixel); 0 = off
    sgbm_min_evidence: float = 1.0  # match evidence a pixel needs (noise units; sky has ~0); 0 = off
    sgbm_fill_max_gap: int = 8  # fill row/column gaps up to this wide inside one surface (px at 320 px width); 0 = off
    sgbm_fill_occluded: bool = True  # fill occlusions and the left band the right camera misses from the surface beside

    def __post_init__(self):
        _require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        # The depth PNGs hold metres * 256 in 16 bits (pipeline.depth_codec): 255.996 m at most.
        _require(0 < self.max_depth <= 255.99, "max_depth", f"must be in (0, 255.99] m (the depth PNG's range), "
                 f"got {self.max_depth}")
        _require(self.iters >= 1, "iters", f"must be >= 1, got {self.iters}")
        _require(self.input_size % 14 == 0, "input_size", f"must be a multiple of 14, got {self.input_size}")
        _require(self.block_size % 2 == 1 and self.block_size >= 1, "block_size",
                 f"must be odd and >= 1, got {self.block_size}")
        _require(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"), "device",
                 f"expected auto, cpu or cuda[:N], got {self.device!r}")
        _require(self.sgbm_lr_max_diff > 0, "sgbm_lr_max_diff", f"must be > 0 (pixels), got {self.sgbm_lr_max_diff}")
        _require(self.sgbm_smoothing >= 0, "sgbm_smoothing", f"must be >= 0 (0 = off), got {self.sgbm_smoothing}")
        _require(self.sgbm_min_evidence >= 0, "sgbm_min_evidence",
                 f"must be >= 0 (0 = off), got {self.sgbm_min_evidence}")
        _require(self.sgbm_fill_max_gap >= 0, "sgbm_fill_max_gap",
                 f"must be >= 0 (pixels; 0 = off), got {self.sgbm_fill_max_gap}")
        _require(self.max_disparity >= 1, "max_disparity", f"must be >= 1 (pixels at 320 px width), "
                 f"got {self.max_disparity}")


@dataclass(frozen=True)
class NormalsConfig:
    """SNE surface normals from the depth stage's maps."""

    max_depth: float = 200.0  # depth beyond this (m) gets no normal
    estimator: Literal["sne", "median4"] = "sne"  # sne: SNE-RoadSeg's exact fusion; median4: see pipeline.normals

    def __post_init__(self):
        _require(self.max_depth > 0, "max_depth", f"must be > 0, got {self.max_depth}")


@dataclass(frozen=True)
class ShardsConfig:
    """HDF5 shards of the train/val splits."""

    samples_per_shard: int = 64
    compression: Literal["none", "lzf", "gzip"] = "none"
    compression_level: Optional[int] = None  # gzip only, 0-9
    preview_rows: int = 3  # samples per split in the preview grid

    def __post_init__(self):
        _require(self.samples_per_shard >= 1, "samples_per_shard", f"must be >= 1, got {self.samples_per_shard}")
        _require(self.compression_level is None or (self.compression == "gzip" and 0 <= self.compression_level <= 9),
                 "compression_level", "only for gzip, in 0..9")
        _require(self.preview_rows >= 1, "preview_rows", f"must be >= 1, got {self.preview_rows}")


@dataclass(frozen=True)
class TrainConfig:
    """Supervised training of the RGB + X teacher and the RGB-only student (lix/train.py).
    The paper's recipe is the commented preset above ``train:`` in params.yaml."""

    model: str = "mfnet"  # a registered model (lix.models): mfnet | sne_roadseg
    depth: int = 152  # ResNet depth of sne_roadseg's encoders (18, 34, 50, 101, 152); unused by mfnet
    pretrained: Optional[str] = None  # a local torchvision ImageNet checkpoint for the encoders; null = random init
    x: Literal["depth", "normals"] = "depth"  # the teacher's geometry input (the student takes RGB only)
    x_encoding: Literal["inverse", "log", "official"] = "inverse"  # depth -> X (lix/inputs.py)
    depth_near: float = 3.0  # metres: inverse = min(1, depth_near / depth); log: 1 at and below
    depth_far: float = 100.0  # metres: log encoding only, 0 at and beyond
    rgb_norm: Literal["none", "imagenet"] = "none"  # none = RGB / 255 (the official nets); imagenet with pretrained
    epochs: int = 2  # maximum epochs (the paper: up to 500 with early stopping)
    patience: int = 10  # stop after this many evaluations without a better val mIoU; 0 = never
    eval_every: int = 1  # epochs between validations (the last epoch is always validated)
    batch_size: int = 8  # per process (the global batch is batch_size * world size)
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    # mfnet: lr * 0.95^epoch (official MFNet); sne_roadseg: lr * 0.9^(epoch // 25) (official
    # SNE-RoadSeg); constant. Stepped once per epoch.
    schedule: Literal["mfnet", "sne_roadseg", "constant"] = "mfnet"
    crop: Optional[tuple[int, int]] = None  # (H, W) training crop; null = the stored image size
    # the fraction of the stored frame size the net sees, in training (it multiplies `scale`) and
    # in validation (inputs resized, logits resized back: the metric stays the full-size one)
    resolution: float = 1.0
    scale: tuple[float, float] = (0.75, 1.5)  # random rescale range
    flip: float = 0.5  # horizontal flip probability
    photometric: float = 0.5  # probability of each photometric distortion (RGB only)
    num_workers: int = 0  # DataLoader worker processes (persistent); 0 = load in the main process
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda[:N]; under torchrun each rank takes cuda:LOCAL_RANK
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    channels_last: bool = True  # NHWC memory format on CUDA (ignored on CPU)
    compile: bool = False  # torch.compile the model for training
    sync_bn: bool = True  # SyncBatchNorm under multi-GPU DDP (torch's SyncBN is CUDA-only; ignored on CPU)

    def __post_init__(self):
        _require(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        _require(self.patience >= 0, "patience", f"must be >= 0 (0 = no early stopping), got {self.patience}")
        _require(self.eval_every >= 1, "eval_every", f"must be >= 1, got {self.eval_every}")
        _require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        _require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        _require(0 <= self.momentum < 1, "momentum", f"must be in [0, 1), got {self.momentum}")
        _require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        _require(self.depth_near > 0, "depth_near", f"must be > 0 (metres), got {self.depth_near}")
        _require(self.depth_far > self.depth_near, "depth_far",
                 f"must be > depth_near ({self.depth_near}), got {self.depth_far}")
        _require(self.crop is None or min(self.crop) >= 1, "crop", f"must be positive (H, W), got {self.crop}")
        _require(0 < self.scale[0] <= self.scale[1], "scale", f"must be 0 < min <= max, got {list(self.scale)}")
        _require(0 < self.resolution <= 4, "resolution", f"must be in (0, 4] (a fraction of the stored size), "
                                                         f"got {self.resolution}")
        _require(0 <= self.flip <= 1, "flip", f"must be a probability in [0, 1], got {self.flip}")
        _require(0 <= self.photometric <= 1, "photometric", f"must be a probability in [0, 1], got {self.photometric}")
        _require(self.num_workers >= 0, "num_workers", f"must be >= 0, got {self.num_workers}")
        _require(self.device in ("auto", "cpu") or self.device.startswith("cuda"), "device",
                 f"expected auto, cpu or cuda[:N], got {self.device!r}")


@dataclass(frozen=True)
class DistillConfig:
    """Distillation of the teacher into the RGB-only student (lix/distill/). The student's recipe
    (model, optimiser, schedule, epochs, augmentation) is ``train.<dataset>`` (with
    ``arch.<model>``); this section says with which teacher checkpoint and hyper-parameters."""

    teacher: Literal["best", "last"] = "best"  # which checkpoint of the teacher's run directory
    epochs: Optional[int] = None  # distillation epochs; null = train.<dataset>.epochs
    # method -> hyper-parameter overrides (`lix distill --list` shows each method's keys and
    # defaults); every method the sweep runs needs an entry ({} = the defaults), so its DVC stage
    # can depend on exactly its own key.
    hyper: dict[str, dict[str, Any]] = field(default_factory=lambda: {"lix": {}})

    def __post_init__(self):
        _require(self.epochs is None or self.epochs >= 1, "epochs", f"must be >= 1 or null, got {self.epochs}")


# Method and variant names become directory names (data/runs/<dataset>/<model>/<method>/...) and
# DVC stage names: letters, digits and _ . , = ~ + -, not starting with a dot, no "..".
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.,=~+-]*")


def check_safe_name(key: str, name: str) -> str:
    """``name`` unchanged if it is safe as one path component and a DVC stage key, else ConfigError
    naming ``key``."""
    ok = isinstance(name, str) and _SAFE_NAME.fullmatch(name) is not None and ".." not in name
    _require(ok, key, f"{name!r} is not a safe name: use letters, digits and _ . , = ~ + - "
                      f"(no '/', no '..', not starting with '.')")
    return name


VARIANT_SEP = "~"  # <method>~<key>=<value>[,<key>=<value>...]: DVC stage names cannot hold "@"
PLAIN_STUDENT = "student"  # the sweep's name for the RGB-only student trained with the CE alone


def parse_variant(name: str) -> tuple[str, dict[str, str]]:
    """``"lix~controller=fixed,beta=2"`` -> ``("lix", {"controller": "fixed", "beta": "2"})``; a
    name without ``~`` has no pairs. ValueError on a malformed name (values are strings here;
    :func:`variant_hyper` types them)."""
    base, sep, rest = name.partition(VARIANT_SEP)
    if not sep:
        return name, {}
    pairs: dict[str, str] = {}
    for part in rest.split(","):
        key, eq, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key or not value or key in pairs:
            raise ValueError(f"malformed variant {name!r} at {part!r}: expected <method>~<key>=<value>[,...]")
        pairs[key] = value
    if not base:
        raise ValueError(f"malformed variant {name!r}: no method before {VARIANT_SEP!r}")
    return base, pairs


def variant_hyper(name: str) -> tuple[str, dict[str, Any]]:
    """(base method, typed overrides) of a variant name: each value read as YAML (``4`` -> 4,
    ``0.5`` -> 0.5, ``true`` -> True, ``fixed`` -> "fixed")."""
    base, pairs = parse_variant(name)
    return base, {k: yaml.safe_load(v) for k, v in pairs.items()}


@dataclass(frozen=True)
class SweepConfig:
    """The experiment matrix of dvc.yaml: every dataset of ``datasets`` x ``models`` x ``seeds``
    gets a teacher, and a student per entry of ``methods`` (``student`` = CE only; any method of
    ``lix distill --list``) and of ``ablations`` (``<method>~<key>=<value>[,...]``, e.g.
    ``lix~controller=fixed,beta=4``: the method with those hyper-parameters)."""

    models: tuple[str, ...] = ("mfnet",)
    seeds: tuple[int, ...] = (0,)
    methods: tuple[str, ...] = (PLAIN_STUDENT, "lix")
    ablations: tuple[str, ...] = ()
    cross: tuple[str, ...] = ()  # <source>-to-<target> pairs scored by the cross stage
    slurm: SlurmConfig = field(default_factory=SlurmConfig)  # lix sweep --executor slurm

    def __post_init__(self):
        for key in ("models", "seeds", "methods", "ablations", "cross"):
            v = getattr(self, key)
            _require(len(set(v)) == len(v), key, f"names an entry twice: {list(v)}")
        _require(len(self.models) >= 1, "models", "must name at least one model")
        _require(len(self.seeds) >= 1, "seeds", "must name at least one seed")
        _require(all(s >= 0 for s in self.seeds), "seeds", f"must be >= 0, got {list(self.seeds)}")
        for key in ("models", "methods", "ablations"):
            for name in getattr(self, key):
                check_safe_name(key, name)
        bad = [m for m in self.methods if VARIANT_SEP in m]
        _require(not bad, "methods", f"{bad}: variants go under sweep.ablations")
        for a in self.ablations:
            try:
                base, pairs = parse_variant(a)
            except ValueError as e:
                raise ConfigError("ablations", str(e)) from None
            _require(bool(pairs) and base != PLAIN_STUDENT, "ablations",
                     f"{a!r}: expected <method>~<key>=<value>[,...] of a distillation method")
        for pair in self.cross:
            src, sep, tgt = pair.partition("-to-")
            _require(bool(sep) and src in DATASETS and tgt in DATASETS and src != tgt, "cross",
                     f"{pair!r}: expected <source>-to-<target> of two different datasets of {list(DATASETS)}")


_ARCH_KEYS_FIXED = ("model", "seed")  # set by the sweep's axes, never by an arch entry


def _per_dataset(cls):
    """A Params field of one ``cls`` per dataset, each at its defaults."""
    return field(default_factory=lambda: {d: cls() for d in DATASETS})


@dataclass(frozen=True)
class Params:
    datasets: tuple[str, ...] = DATASETS  # the datasets the DVC pipeline runs over (dvc.yaml's foreach)
    synthetic: dict[str, SyntheticConfig] = _per_dataset(SyntheticConfig)
    download: dict[str, DownloadConfig] = _per_dataset(DownloadConfig)
    reader: dict[str, ReaderConfig] = _per_dataset(ReaderConfig)
    splits: dict[str, SplitConfig] = _per_dataset(SplitConfig)
    depth: dict[str, DepthConfig] = _per_dataset(DepthConfig)
    normals: dict[str, NormalsConfig] = _per_dataset(NormalsConfig)
    shards: dict[str, ShardsConfig] = _per_dataset(ShardsConfig)
    train: dict[str, TrainConfig] = _per_dataset(TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    # model -> overrides of train.<dataset> for that architecture (its batch size, lr, schedule,
    # depth...), applied whenever a run trains that model.
    arch: dict[str, dict[str, Any]] = field(default_factory=lambda: {"mfnet": {}})
    sweep: SweepConfig = field(default_factory=SweepConfig)

    def __post_init__(self):
        bad = [d for d in self.datasets if d not in DATASETS]
        _require(not bad and len(self.datasets) >= 1, "datasets",
                 f"unknown dataset(s) {bad}; allowed: {list(DATASETS)}" if bad else "must name at least one dataset")
        for section in ("synthetic", "download", "reader", "splits", "depth", "normals", "shards", "train"):
            got = getattr(self, section)
            unknown = sorted(set(got) - set(DATASETS))
            _require(not unknown, section, f"unknown dataset(s) {unknown}; allowed: {list(DATASETS)}")
            # A section may name a subset of datasets; the rest keep their defaults.
            defaults = Params.__dataclass_fields__[section].default_factory()
            object.__setattr__(self, section, {**defaults, **got})
        train_keys = [f.name for f in dataclasses.fields(TrainConfig)]
        allowed = [t for t in train_keys if t not in _ARCH_KEYS_FIXED]
        for model, over in self.arch.items():
            _require(isinstance(over, dict), f"arch.{model}", f"expected a mapping of train keys, got {over!r}")
            for k, v in over.items():
                if k in DATASETS:  # arch.<model>.<dataset>: overrides for that dataset only
                    _require(isinstance(v, dict), f"arch.{model}.{k}", f"expected a mapping of train keys, got {v!r}")
                    for kk in v:
                        _require(kk in allowed, f"arch.{model}.{k}.{kk}",
                                 f"not a train key an architecture may set; allowed: {allowed}")
                    continue
                _require(k in allowed, f"arch.{model}.{k}",
                         f"not a train key an architecture may set (or a dataset: {sorted(DATASETS)}); "
                         f"allowed: {allowed}")

    def check_matrix_entries(self) -> None:
        """Every model and method the sweep runs has its ``arch`` / ``distill.hyper`` entry (each
        DVC stage depends on its own key). Called by :func:`lix.validate.check_params` after the
        names were checked against the registries, so that a misspelt name is reported as unknown,
        not as a missing entry (the registries import torch, which this module does not)."""
        missing = [m for m in self.sweep.models if m not in self.arch]
        _require(not missing, "arch", f"needs an entry for each model in sweep.models ({{}} = train.<dataset> "
                                      f"as it is); missing: {missing}")
        needed = [m for m in self.sweep.methods if m != PLAIN_STUDENT]
        needed += [parse_variant(a)[0] for a in self.sweep.ablations]
        missing = sorted({m for m in needed if m not in self.distill.hyper})
        _require(not missing, "distill.hyper", f"needs an entry for each method the sweep runs (use {{}} for "
                                               f"the defaults); missing: {missing}")

    def train_config(self, dataset: str, model: str | None = None, seed: int | None = None) -> TrainConfig:
        """``train.<dataset>`` for ``model`` (default its own ``model``) with ``arch.<model>``'s
        overrides (then ``arch.<model>.<dataset>``'s), and ``seed`` when given; validated as a whole
        (errors name ``arch.<model>``)."""
        base = self.train[dataset]
        model = model or base.model
        arch = self.arch.get(model, {})
        general = {k: v for k, v in arch.items() if k not in DATASETS}
        values = {**dataclasses.asdict(base), **general, **arch.get(dataset, {}), "model": model}
        if seed is not None:
            values["seed"] = seed
        return from_dict(TrainConfig, values, f"arch.{model}" if model in self.arch else f"train.{dataset}")


ANCHORS_KEY = "defaults"  # params.yaml's holder of shared values, which reach stages via `<<: *train` only


def params_from_dict(data: Any) -> Params:
    """:class:`Params` from params.yaml's parsed mapping (merges resolved), without ``ANCHORS_KEY``."""
    _require(data is None or isinstance(data, dict), "<root>", f"expected a mapping of sections, got {data!r}")
    data = dict(data or {})
    held = data.pop(ANCHORS_KEY, None)
    _require(held is None or isinstance(held, dict), ANCHORS_KEY,
             f"expected a mapping of shared values (YAML anchors), got {held!r}")
    return from_dict(Params, data)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "parameter file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:  # one line: where and what (PyYAML's own message spans several)
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise DataError(path, f"not valid YAML{where}: {getattr(e, 'problem', None) or type(e).__name__}") from None
    return params_from_dict(data)
