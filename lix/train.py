"""Supervised training of the RGB + X teacher and the RGB-only student, in small named pieces
(as torchvision's references): ``build_loaders``, ``build_model``, ``train_one_epoch``,
``evaluate``, ``fit``; ``evaluate_checkpoint`` for a finished run.

    fit(shard_dir, out_dir, TrainConfig(...), dataset="kitti", role="teacher")

writes to ``out_dir``: ``last.pt`` and ``best.pt`` (lix/checkpoint.py: model, optimizer,
scheduler, epoch, step, every RNG state, the loader's seed/epoch, the resolved config, the
metric history), ``model.safetensors`` (the best weights, no pickle), ``config.json`` (the
resolved run config), ``summary.json`` (best val mIoU and where the run stopped) and
``dvclive/`` (per epoch: loss terms, val metrics, lr, throughput); ``evaluate_checkpoint`` adds
``metrics.json`` (the full val metrics of ``best.pt``) and its pictures. A rerun resumes from
``last.pt`` (exactly: on CPU, 2 + 2 epochs give the weights of 4) and refuses a config that
would change the run; ``RESUMABLE_KEYS`` (epochs, patience, ...) may change.

Loss: cross-entropy over the labelled pixels (255 = ignore), averaged over the labelled pixels
of the *global* batch: each rank divides its sum by the all-reduced count (times the world size,
as DDP averages gradients over ranks), so N processes with batch b take the step one process
takes with batch N*b, whatever the ranks' share of ignored pixels.

DDP: started by torchrun (``WORLD_SIZE`` > 1 in the environment), gloo on CPU and nccl on CUDA,
each rank on cuda:LOCAL_RANK; DistributedSampler (set_epoch each epoch, also the dataset's own
set_epoch for the augmentation draws); SyncBatchNorm on CUDA when ``sync_bn``; the confusion
matrix reduced over ranks; only rank 0 writes. Validation runs on the unwrapped model over a
disjoint slice of the val set per rank (no padding duplicates, so the metrics are exact).

On CUDA: bf16 autocast (``amp``) and channels_last (``channels_last``); ``compile`` applies
torch.compile to the training model. A non-finite loss stops the run with NonFiniteLoss naming
the epoch, step and loss term before the optimizer step; the last good checkpoint is kept.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from lix.checkpoint import (check_resume_config, export_safetensors, load_checkpoint, load_safetensors,
                            rng_state, save_checkpoint, set_rng_state)
from lix.config import TrainConfig, from_dict
from lix.data import AugmentConfig, ShardDataset, to_device
from lix.inputs import model_inputs, x_channels
from lix.reduce import global_mean
from lix.runtime import DistInfo, ProgressBar, autocast, barrier, init_distributed, resolve_device, seed_everything
from pipeline.errors import ConfigError, DataError, LixError
from pipeline.constants import IGNORE_INDEX

log = logging.getLogger(__name__)

ROLES = ("teacher", "student")
SCALAR_METRICS = ("miou", "mfsc", "fwiou", "fwfsc", "pixel_acc")


class NonFiniteLoss(LixError):
    """A loss term became NaN or infinite; the run stopped before the optimizer step."""

    def __init__(self, epoch: int, step: int, terms: dict[str, float], kept: Path | None = None):
        self.epoch, self.step, self.terms, self.kept = epoch, step, terms, kept
        bad = {k: v for k, v in terms.items() if not math.isfinite(v)}
        named = {k: v for k, v in bad.items() if k != "loss"} or bad
        where = f"the last good checkpoint {kept} is kept" if kept else "no checkpoint was written yet"
        super().__init__(f"non-finite loss at epoch {epoch} step {step}: "
                         + ", ".join(f"{k} = {v}" for k, v in named.items()) + f"; training stopped, {where}")


# --------------------------------------------------------------------------- data
class RankSlice(Sampler[int]):
    """Indices rank, rank + world, ...: disjoint, covering every sample once (evaluation)."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1):
        self.n, self.rank, self.world = n, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))


def augment_config(cfg: TrainConfig) -> AugmentConfig:
    return AugmentConfig(scale=cfg.scale, crop=cfg.crop, flip=cfg.flip, photometric=cfg.photometric)


def build_loaders(shard_dir: str | Path, cfg: TrainConfig, d: DistInfo = DistInfo(),
                  verify: str = "size") -> tuple[DataLoader, DataLoader]:
    """Train loader (augmented, DistributedSampler shuffled by (seed, epoch), the last partial
    batch dropped) and val loader (no augmentation, this rank's slice). Call
    :func:`set_loader_epoch` before each epoch. The loaders own their generators, so iterating
    them leaves the global torch RNG alone (exact resume)."""
    train = ShardDataset(shard_dir, "train", augment=augment_config(cfg), seed=cfg.seed, verify=verify)
    val = ShardDataset(shard_dir, "val", augment=None, verify=verify)
    sampler = DistributedSampler(train, num_replicas=d.world_size, rank=d.rank, shuffle=True, seed=cfg.seed)
    if len(sampler) < cfg.batch_size:
        raise ConfigError("train.batch_size", f"{cfg.batch_size} per process is more than the {len(sampler)} "
                                              f"training samples each of {d.world_size} process(es) gets "
                                              f"from {shard_dir}")
    common = dict(batch_size=cfg.batch_size, num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0,
                  pin_memory=d.device.type == "cuda")
    train_loader = DataLoader(train, sampler=sampler, drop_last=True,
                              generator=torch.Generator().manual_seed(cfg.seed), **common)
    val_loader = DataLoader(val, sampler=RankSlice(len(val), d.rank, d.world_size),
                            generator=torch.Generator().manual_seed(cfg.seed), **common)
    return train_loader, val_loader


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """The sampler's shuffle and the dataset's augmentation draws for ``epoch``."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)


def prepare_batch(batch: dict, device: torch.device, channels_last: bool = False) -> dict:
    """``to_device`` (stored dtypes -> model dtypes on the device), NHWC images if asked."""
    batch = to_device(batch, device, non_blocking=device.type == "cuda")
    if channels_last:
        batch = {k: v.contiguous(memory_format=torch.channels_last) if torch.is_tensor(v) and v.dim() == 4 else v
                 for k, v in batch.items()}
    return batch


@dataclass(frozen=True)
class Inputs:
    """What the net sees: RGB normalisation and the X encoding (lix/inputs.py); x None = student."""

    x: str | None
    rgb_norm: str = "none"
    x_encoding: str = "inverse"
    depth_near: float = 3.0
    depth_far: float = 100.0

    @classmethod
    def from_config(cls, cfg: TrainConfig, role: str) -> "Inputs":
        return cls(cfg.x if role == "teacher" else None, cfg.rgb_norm, cfg.x_encoding, cfg.depth_near, cfg.depth_far)

    def __call__(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        return model_inputs(batch, self.x, self.rgb_norm, self.x_encoding, self.depth_near, self.depth_far)


# --------------------------------------------------------------------------- model
def build_model(cfg: TrainConfig, n_classes: int, x: str | None) -> nn.Module:
    """The registered model ``cfg.model`` (teacher with X channels, or the RGB-only student).
    ``depth`` and ``pretrained`` go to models that take them; ``pretrained`` for one that takes
    none is a ConfigError."""
    import lix.models  # noqa: F401  (registers the models)
    from lix.models.registry import MODELS, create_model

    if cfg.model not in MODELS:
        raise ConfigError("train.model", f"unknown model {cfg.model!r}; expected one of {sorted(MODELS)}")
    params = inspect.signature(MODELS[cfg.model]).parameters
    kw = {}
    if "depth" in params:
        kw["depth"] = cfg.depth
    if cfg.pretrained is not None:
        if "pretrained" not in params:
            raise ConfigError("train.pretrained", f"model {cfg.model!r} takes no pretrained encoder weights; "
                                                  f"set it to null")
        if not Path(cfg.pretrained).is_file():
            raise DataError(cfg.pretrained, "pretrained weights not found (train.pretrained)")
        kw["pretrained"] = cfg.pretrained
    return create_model(cfg.model, n_classes, x_channels(x), **kw)


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay)


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per epoch. mfnet: lr * 0.95^epoch (official MFNet, lr_start * 0.95^(epoch-1)
    with epochs from 1); sne_roadseg: lr * 0.9^(epoch // 25) (official SNE-RoadSeg); constant."""
    sched = torch.optim.lr_scheduler
    if cfg.schedule == "mfnet":
        return sched.ExponentialLR(optimizer, gamma=0.95)
    if cfg.schedule == "sne_roadseg":
        return sched.StepLR(optimizer, step_size=25, gamma=0.9)
    return sched.ConstantLR(optimizer, factor=1.0, total_iters=0)


def place_model(model: nn.Module, cfg: TrainConfig, d: DistInfo) -> tuple[nn.Module, nn.Module]:
    """(model to train, the plain model): device, channels_last, DDP, compile."""
    cuda = d.device.type == "cuda"
    model = model.to(d.device)
    if cuda and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if d.distributed and cfg.sync_bn and not cuda:  # converted by _fit before the optimizer is built
        log.warning("sync_bn: torch's SyncBatchNorm runs on CUDA only; on CPU every rank keeps its own "
                    "batch statistics")
    plain = model
    if d.distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[d.local_rank] if cuda else None)
    if cfg.compile:
        model = torch.compile(model)
    return model, plain


# --------------------------------------------------------------------------- loss
def cross_entropy(logits: torch.Tensor, label: torch.Tensor, world_size: int = 1) -> torch.Tensor:
    """logits (N, C, H, W), label (N, H, W) int64 with 255 = ignore. The mean over the labelled
    pixels of the global batch (see the module docstring); 0 when none is labelled."""
    ce = F.cross_entropy(logits.float(), label, ignore_index=IGNORE_INDEX, reduction="sum")
    return global_mean(ce, (label != IGNORE_INDEX).sum(), world_size)


class Supervised:
    """loss_fn(model, batch) -> {"loss", "ce"}: plain supervised training (teacher or student)."""

    def __init__(self, inputs: Inputs, world_size: int = 1):
        self.inputs, self.world_size = inputs, world_size

    def __call__(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        rgb, x = self.inputs(batch)
        ce = cross_entropy(model(rgb, x), batch["label"], self.world_size)
        return {"loss": ce, "ce": ce}


@dataclass
class Task:
    """What one run trains. ``module``: what the optimizer steps, DDP wraps and ``loss_fn``
    calls (the model itself, or the student with a distiller's trainable parts); ``student``:
    the model that is evaluated, checkpointed under "model" and exported; ``inputs``: what it
    sees; ``extra``: modules whose state goes to the checkpoint under "extra" (e.g. the
    distiller); ``config``: entries added to the run config (a resume compares them)."""

    module: nn.Module
    student: nn.Module
    loss_fn: Callable[[nn.Module, dict], dict]
    inputs: Inputs
    extra: dict[str, nn.Module] = dataclasses.field(default_factory=dict)
    config: dict = dataclasses.field(default_factory=dict)
    # monitor(student) -> {name: value}: extra val measurements logged at each evaluation as
    # val/<name> (lix/distill/monitor.py: the teacher-student feature CKA of the paper's Fig. 5).
    monitor: Callable[[nn.Module], dict[str, float]] | None = None


def supervised_task(model: nn.Module, inputs: Inputs, d: DistInfo, **_) -> Task:
    return Task(model, model, Supervised(inputs, d.world_size), inputs)


# --------------------------------------------------------------------------- loop
def train_one_epoch(model: nn.Module, loss_fn: Callable[[nn.Module, dict], dict], optimizer: torch.optim.Optimizer,
                    loader: DataLoader, epoch: int, step: int, *, d: DistInfo = DistInfo(), amp: bool = False,
                    channels_last: bool = False, progress: bool = False) -> tuple[dict[str, float], int]:
    """One pass over ``loader``. ``loss_fn(model, batch)`` returns named loss terms with the total
    under "loss". Returns (the terms' means over the epoch and ranks, samples_per_s, seconds;
    the step count after the epoch). Steps count optimizer steps from 0 over the whole run.
    Raises NonFiniteLoss (on every rank) before stepping on a NaN/inf term."""
    model.train()
    sums: torch.Tensor | None = None
    names: list[str] = []
    n_steps = n_samples = 0
    t0 = time.perf_counter()
    with ProgressBar(f"epoch {epoch}", len(loader), progress and d.is_main) as bar:
        for batch in loader:
            batch = prepare_batch(batch, d.device, channels_last)
            with autocast(d.device, amp):
                terms = loss_fn(model, batch)
            names = list(terms)
            values = torch.stack([terms[k].detach().float() for k in names])
            if d.distributed:  # every rank must see a bad value, or the others hang in backward
                torch_dist.all_reduce(values)
                values /= d.world_size
            host = values.tolist()
            if not all(math.isfinite(v) for v in host):
                raise NonFiniteLoss(epoch, step, dict(zip(names, host)))
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optimizer.step()
            step += 1
            n_steps += 1
            n_samples += batch["rgb"].shape[0] * d.world_size
            sums = values if sums is None else sums + values
            bar.advance(f"loss {host[0]:.4f}")
    seconds = time.perf_counter() - t0
    stats = {k: float(v) / max(n_steps, 1) for k, v in zip(names, (sums if sums is not None else []))}
    stats |= {"samples_per_s": n_samples / max(seconds, 1e-9), "seconds": seconds}
    return stats, step


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, inputs: Inputs, n_classes: int, *, d: DistInfo = DistInfo(),
             amp: bool = False, channels_last: bool = False, max_batches: int | None = None,
             progress: bool = False) -> dict:
    """Confusion-matrix metrics (lix.metrics) of ``model`` (the plain, unwrapped model) over
    this rank's slice of ``loader``, reduced over ranks."""
    from lix.metrics import ConfusionMatrix

    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(n_classes, ignore_index=IGNORE_INDEX, device=d.device)
    total = len(loader) if max_batches is None else min(max_batches, len(loader))
    with ProgressBar("val", total, progress and d.is_main) as bar:
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            batch = prepare_batch(batch, d.device, channels_last)
            with autocast(d.device, amp):
                logits = model(*inputs(batch))
            cm.update(logits.float(), batch["label"])
            bar.advance()
    if d.distributed:
        cm.reduce()
    model.train(was_training)
    return cm.compute()


def scalar_metrics(metrics: dict) -> dict[str, float]:
    return {k: float(metrics[k]) for k in SCALAR_METRICS if k in metrics}


# --------------------------------------------------------------------------- fit
def run_config(cfg: TrainConfig, dataset: str, role: str, class_names: list[str], world_size: int) -> dict:
    """The resolved config a checkpoint records (plain types; resume compares it key by key)."""
    x = cfg.x if role == "teacher" else None
    return {"dataset": dataset, "role": role, "x": x, "x_channels": x_channels(x), "n_classes": len(class_names),
            "class_names": list(class_names), "world_size": world_size,
            "train": json.loads(json.dumps(dataclasses.asdict(cfg)))}


def run_digest(config: dict) -> str:
    """sha256 (hex) of the run config without the keys a resume may change (``RESUMABLE_KEYS``):
    two runs with the same digest follow the same trajectory of weights (on the same code)."""
    import hashlib

    from lix.checkpoint import RESUMABLE_KEYS, flatten

    kept = {k: v for k, v in flatten(config).items() if k not in RESUMABLE_KEYS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


# Project files a training run never executes (the commands' front ends, the report, the sweep,
# prediction, the preparation stages): edits there do not make a checkpoint another run's. Any
# other file counts, a new module included, so the list errs on the side of starting afresh.
NOT_TRAINING_CODE = ("lix/cli", "lix/__main__.py", "lix/report.py", "lix/figures.py", "lix/paper_figures.py",
                     "lix/sweep.py", "lix/predict.py", "lix/cross_dataset.py", "lix/curves.py", "pipeline/depth/",
                     "pipeline/download.py", "pipeline/normals.py", "pipeline/geometry_quality.py",
                     "pipeline/splits.py", "pipeline/prepare.py", "pipeline/sources/synthetic/")


def code_digest() -> str:
    """sha256 (hex) of the source of the code a training run executes: every ``.py`` file of
    the ``lix`` and ``pipeline`` packages but those of :data:`NOT_TRAINING_CODE`, by relative
    path. It depends on the checkout only (not on what happened to be imported), so a resume by
    any command or process compares like with like."""
    import hashlib

    import pipeline

    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for package in (Path(__file__).resolve().parent, Path(pipeline.__file__).resolve().parent):
        for path in sorted(package.rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if "__pycache__" in rel or rel.startswith(NOT_TRAINING_CODE):
                continue
            h.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def provenance(config: dict, code: str) -> dict:
    """Where a run comes from: the git commit of the working directory (None outside a
    repository) and whether tracked files differ from it, the run and code digests, the host and
    the versions. Recorded in ``summary.json`` (the report's setup table)."""
    import platform
    import subprocess

    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    # dirty: tracked files differ from the commit, DVC's own record (dvc.lock, rewritten by every
    # stage of a `dvc repro`) aside
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!dvc.lock") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status), "run_digest": run_digest(config),
            "code_digest": code, "host": platform.node(), "torch": torch.__version__,
            "python": platform.python_version()}


RESUME_MODES = ("always", "never", "if_same")  # fit's resume: True = "always", False = "never"


def _resume_mode(resume: bool | str) -> str:
    mode = {True: "always", False: "never"}.get(resume, resume)
    if mode not in RESUME_MODES:
        raise ConfigError("resume", f"expected one of {RESUME_MODES} (or a bool), got {resume!r}")
    return mode


def _same_run(saved: dict, config: dict, code: str) -> list[str]:
    """Why the checkpoint's run is not this one: the config keys that differ (resumable keys
    aside), and "code" when the code that trained it (its ``code_digest``) is not ``code``."""
    from lix.checkpoint import config_diff

    why = [k for k, _, _ in config_diff(saved["config"], config)]
    saved_code = saved.get("code_digest")
    if saved_code is not None and saved_code != code:
        why.append("code")
    return why


def _write_json(path: Path, data) -> None:
    from lix.metrics import json_safe
    from pipeline.atomic import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(json_safe(data), indent=2) + "\n")


def _gather_rng(d: DistInfo) -> list[dict]:
    if not d.distributed:
        return [rng_state()]
    states: list = [None] * d.world_size
    torch_dist.all_gather_object(states, rng_state())
    return states


def _stop_reason(epoch: int, cfg: TrainConfig, bad_evals: int) -> str | None:
    if cfg.patience and bad_evals >= cfg.patience:
        return "early_stopping"
    return "max_epochs" if epoch >= cfg.epochs else None


def fit(shard_dir: str | Path, out_dir: str | Path, cfg: TrainConfig, *, dataset: str, role: str,
        resume: bool | str = True, progress: bool = True, verify: str = "size",
        task_factory: Callable[..., Task] = supervised_task) -> dict:
    """Train ``role`` ('teacher': RGB + cfg.x; 'student': RGB) on the shards of ``dataset`` into
    ``out_dir`` (see the module docstring). ``resume``: True / "always": go on from
    ``out_dir/last.pt`` when it exists (a config that changes the run is refused with
    ConfigMismatch); False / "never": start afresh; "if_same": go on when the checkpoint's run
    config (resumable keys aside) and code are this run's, else start afresh (what the DVC
    stages use: their outputs persist, so an interrupted `dvc repro` resumes and a changed
    parameter or code retrains). Nothing in ``out_dir`` is removed or written before the
    config, the data, the model and the method were built and checked.
    ``task_factory(model, inputs, d, cfg=, train_loader=, out_dir=, resumed=)`` says what the
    run trains (default: the model, supervised; lix/distill/train.py: a distilled student).
    Returns the summary written to ``summary.json``."""
    if role not in ROLES:
        raise ConfigError("role", f"expected one of {ROLES}, got {role!r}")
    resume = _resume_mode(resume)
    out_dir = Path(out_dir)
    created = not torch_dist.is_initialized()
    d = init_distributed(cfg.device)
    try:
        return _fit(Path(shard_dir), out_dir, cfg, dataset, role, resume, progress, verify, d, task_factory)
    finally:
        if created and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def _fit(shard_dir: Path, out_dir: Path, cfg: TrainConfig, dataset: str, role: str, resume: str, progress: bool,
         verify: str, d: DistInfo, task_factory: Callable[..., Task]) -> dict:
    code = code_digest()
    seed_everything(cfg.seed + d.rank)
    if d.device.type == "cpu":
        # Denormal floats arise in training on the shards (not on random inputs) and make CPU steps
        # slow: MFNet teacher, batch 8, 320x96, 2 cores: 2.8 s -> 0.7 s per step when flushed to 0
        # (student 0.52 -> 0.38 s). Values below 1e-38 carry nothing a segmentation net needs.
        torch.set_flush_denormal(True)
    train_loader, val_loader = build_loaders(shard_dir, cfg, d, verify)
    class_names = train_loader.dataset.class_names
    config = run_config(cfg, dataset, role, class_names, d.world_size)
    inputs = Inputs.from_config(cfg, role)
    init_rng = rng_state()  # a run that starts afresh after a first look at the checkpoint re-draws the same init

    def make_model() -> nn.Module:
        set_rng_state(init_rng)
        model = build_model(cfg, len(class_names), inputs.x)
        if d.distributed and cfg.sync_bn and d.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model

    model = make_model()
    last, best_path = out_dir / "last.pt", out_dir / "best.pt"
    ckpt = None
    if resume != "never" and last.is_file():
        from lix.checkpoint import load_resume_checkpoint

        ckpt = load_resume_checkpoint(last, best_path)
    resumed = ckpt is not None

    def make_task(resumed: bool) -> Task:
        return task_factory(model, inputs, d, cfg=cfg, train_loader=train_loader, val_loader=val_loader,
                            out_dir=out_dir, resumed=resumed, progress=progress)

    task = make_task(resumed)
    config |= task.config
    if resumed and resume == "if_same":
        why = _same_run(ckpt, config, code)
        if why:
            if d.is_main:
                log.info("%s: the run changed since %s (%s): starting afresh", out_dir, last, ", ".join(why))
            resumed, ckpt = False, None
            model = make_model()
            task = make_task(False)
            config = run_config(cfg, dataset, role, class_names, d.world_size) | task.config
    if resumed:
        check_resume_config(last, ckpt["config"], config)
        if d.is_main and "code" in _same_run(ckpt, config, code):
            log.warning("%s was trained by other code than this checkout's; resuming anyway (--resume)", last)
    elif d.is_main:  # a fresh run: no file of an earlier run may pass for one of this run
        for name in ("last.pt", "best.pt", "model.safetensors", "summary.json", "metrics.json", "failed.json"):
            (out_dir / name).unlink(missing_ok=True)
    optimizer = build_optimizer(cfg, task.module)
    scheduler = build_scheduler(cfg, optimizer)

    epoch = step = bad_evals = 0
    history: list[dict] = []
    best = {"miou": -1.0, "epoch": 0}
    best_val = None  # the full val metrics of the best epoch, when this process evaluated it
    if resumed:
        task.student.load_state_dict(ckpt["model"])
        for name, module in task.extra.items():
            module.load_state_dict(ckpt["extra"][name])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        epoch, step, history = ckpt["epoch"], ckpt["step"], list(ckpt["history"])
        best, bad_evals = dict(ckpt["best"]), ckpt["bad_evals"]
        rngs = ckpt["rng"]
        if len(rngs) == d.world_size:
            set_rng_state(rngs[d.rank])
        else:  # world_size is part of the config, so only a hand-edited file gets here
            seed_everything(cfg.seed + d.rank + 1000 * epoch)
        if d.is_main:
            log.info("resuming %s from %s at epoch %d of %d (step %d)", role, last, epoch, cfg.epochs, step)
        del ckpt
    train_model, _ = place_model(task.module, cfg, d)
    plain = task.student
    amp, channels_last = cfg.amp, cfg.channels_last and d.device.type == "cuda"
    loss_fn, inputs = task.loss_fn, task.inputs

    # Fail fast: two validation batches through the net before any training (shapes, classes).
    evaluate(plain, val_loader, inputs, len(class_names), d=d, amp=amp, channels_last=channels_last,
             max_batches=2)

    live = None
    origin = provenance(config, code) if d.is_main else {}
    if d.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_json(out_dir / "config.json", config)
        try:
            from dvclive import Live
        except ImportError:  # e.g. a bare GPU box without DVC: the run's summary.json still holds the history
            log.warning("dvclive is not installed: no per-epoch dvclive logs for %s", out_dir)
        else:
            live = Live(dir=str(out_dir / "dvclive"), resume=resumed, save_dvc_exp=False, dvcyaml=False)
    try:
        while _stop_reason(epoch, cfg, bad_evals) is None:
            set_loader_epoch(train_loader, epoch)
            lr = optimizer.param_groups[0]["lr"]
            try:
                stats, step = train_one_epoch(train_model, loss_fn, optimizer, train_loader, epoch, step, d=d,
                                              amp=amp, channels_last=channels_last, progress=progress)
            except NonFiniteLoss as e:
                raise NonFiniteLoss(e.epoch, e.step, e.terms, last if last.is_file() else None) from None
            scheduler.step()
            epoch += 1
            record = {"epoch": epoch, "step": step, "lr": lr, **{f"train/{k}": v for k, v in stats.items()}}
            improved = False
            if epoch % cfg.eval_every == 0 or epoch >= cfg.epochs:
                t0 = time.perf_counter()
                full = evaluate(plain, val_loader, inputs, len(class_names), d=d, amp=amp,
                                channels_last=channels_last, progress=progress)
                metrics = scalar_metrics(full)
                record |= {f"val/{k}": v for k, v in metrics.items()} | {"val/seconds": time.perf_counter() - t0}
                if task.monitor is not None:
                    record |= {f"val/{k}": v for k, v in task.monitor(plain).items()}
                improved = metrics["miou"] > best["miou"]
                if improved:
                    best, bad_evals = {"miou": metrics["miou"], "epoch": epoch}, 0
                    best_val = {"epoch": epoch, **full}
                else:
                    bad_evals += 1
            history.append(record)
            ckpt = {"model": plain.state_dict(), "extra": {k: m.state_dict() for k, m in task.extra.items()},
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "epoch": epoch, "step": step, "rng": _gather_rng(d),
                    "loader": {"seed": cfg.seed, "epoch": epoch}, "config": config, "history": history,
                    "best": best, "bad_evals": bad_evals, "stopped": _stop_reason(epoch, cfg, bad_evals),
                    "code_digest": origin.get("code_digest")}
            if d.is_main:
                save_checkpoint(last, ckpt)
                if improved:
                    save_checkpoint(best_path, ckpt)
                    export_safetensors(ckpt["model"], out_dir / "model.safetensors", config)
                if live is not None:
                    _log_epoch(live, record)
                log.info("%s", epoch_line(record, cfg.epochs, best))  # after last.pt: the line means it is kept
            barrier(d)
    finally:
        if live is not None:
            live.end()
    summary = {"best_miou": best["miou"], "best_epoch": best["epoch"], "epochs": epoch, "steps": step,
               "stopped": _stop_reason(epoch, cfg, bad_evals),
               "seconds_per_epoch": (sum(h["train/seconds"] for h in history) / len(history)) if history else None,
               "last": history[-1] if history else None,
               "samples": {"train": len(train_loader.dataset), "val": len(val_loader.dataset)},
               "provenance": origin}
    if d.is_main:
        _write_json(out_dir / "summary.json", summary)
    barrier(d)
    # not in summary.json: the confusion matrix of best.pt's own evaluation, so that the CLI's
    # evaluate_checkpoint need not run the val split again (on the CPU it equals a fresh pass: the
    # same weights, the same deterministic pass; tests/test_train.py checks; on CUDA the trainer's
    # pass used channels_last, a difference of rounding only)
    if best_val is not None and best_val["epoch"] == best["epoch"]:
        summary = {**summary, "best_val": best_val}
    return summary


def epoch_line(record: dict, epochs: int, best: dict) -> str:
    """One line per epoch (logged, so it shows without progress bars, e.g. under DVC):
    ``epoch 3/10  loss 0.812 (ce 0.700, kd 0.112)  val mIoU 41.20 % (best 41.20 % @3)  12.3 s``."""
    terms = [(k[len("train/"):], v) for k, v in record.items()
             if k.startswith("train/") and k not in ("train/samples_per_s", "train/seconds")
             and not k.startswith("train/diag.")]
    loss = dict(terms).get("loss")
    parts = [f"epoch {record['epoch']}/{epochs}"]
    if loss is not None:
        rest = ", ".join(f"{k} {v:.3f}" for k, v in terms if k != "loss")
        parts.append(f"loss {loss:.3f}" + (f" ({rest})" if rest else ""))
    if "val/miou" in record:
        parts.append(f"val mIoU {100 * record['val/miou']:.2f} % (best {100 * best['miou']:.2f} % @{best['epoch']})")
    seconds = record.get("train/seconds", 0.0) + record.get("val/seconds", 0.0)
    parts.append(f"{seconds:.1f} s")
    return "  ".join(parts)


def _log_epoch(live, record: dict) -> None:
    live.step = record["epoch"]
    for k, v in record.items():
        if k not in ("epoch", "step"):
            live.log_metric(k, v)
    live.next_step()


# --------------------------------------------------------------------------- evaluation of a run
def load_run(checkpoint: str | Path) -> tuple[dict, dict]:
    """(state_dict, run config) from a ``.pt`` checkpoint or an exported ``.safetensors``."""
    checkpoint = Path(checkpoint)
    if checkpoint.suffix == ".safetensors":
        state, config = load_safetensors(checkpoint)
    else:
        ckpt = load_checkpoint(checkpoint)
        state, config = ckpt["model"], ckpt["config"]
    if "train" not in config or "n_classes" not in config:
        raise DataError(checkpoint, "carries no run config (not written by lix train)")
    return state, config


def evaluate_checkpoint(checkpoint: str | Path, shard_dir: str | Path, out_dir: str | Path, *, rows: int = 4,
                        device: str = "auto", progress: bool = True, verify: str = "size",
                        metrics: dict | None = None) -> dict:
    """Evaluate a trained model on the val split of ``shard_dir``: ``metrics.json`` (scalars and
    per-class IoU/F1 by class name, the confusion matrix), ``confusion.png`` and
    ``predictions.png`` (RGB | ground truth | prediction for the first ``rows`` val samples, in
    the dataset's colours). ``metrics``: :func:`evaluate`'s result for exactly these weights on
    this split (``fit``'s ``best_val``), used instead of a second pass. Returns the metrics written."""
    from lix.metrics import plot_confusion

    state, config = load_run(checkpoint)
    cfg = dataclasses.replace(from_dict(TrainConfig, config["train"], "train"), pretrained=None,
                              device=device, num_workers=0)
    d = DistInfo(device=resolve_device(device))
    val = ShardDataset(shard_dir, "val", augment=None, verify=verify)
    if list(val.class_names) != list(config["class_names"]):
        raise DataError(shard_dir, f"classes {val.class_names} differ from the model's {config['class_names']}")
    model = build_model(cfg, config["n_classes"], config["x"])
    model.load_state_dict(state)
    model.to(d.device).eval()
    inputs = Inputs.from_config(cfg, config["role"])
    if metrics is None:
        loader = DataLoader(val, batch_size=cfg.batch_size, shuffle=False)
        metrics = evaluate(model, loader, inputs, config["n_classes"], d=d, amp=cfg.amp, progress=progress)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(config["class_names"])
    result = {"checkpoint": str(checkpoint), "dataset": config["dataset"], "role": config["role"],
              "model": cfg.model, "x": config["x"], "val_samples": len(val), **scalar_metrics(metrics),
              "per_class_iou": dict(zip(names, _floats(metrics["per_class_iou"]))),
              "per_class_f1": dict(zip(names, _floats(metrics["per_class_f1"]))),
              "matrix": _tolist(metrics["matrix"])}
    _write_json(out_dir / "metrics.json", result)
    plot_confusion(metrics["matrix"], names, out_dir / "confusion.png")
    write_prediction_grid(model, val, inputs, names, out_dir / "predictions.png", rows, d, cfg.amp)
    return result


def _tolist(v):
    return v.tolist() if hasattr(v, "tolist") else list(v)


def _floats(v) -> list[float]:
    return [float(x) for x in _tolist(v)]


@torch.no_grad()
def write_prediction_grid(model: nn.Module, dataset: ShardDataset, inputs: Inputs, class_names: list[str],
                          path: Path, rows: int, d: DistInfo = DistInfo(), amp: bool = False) -> Path:
    """RGB | ground truth | prediction (labels over RGB, pipeline.preview's colours), one row
    per val sample, 2 px white gutters."""
    from pipeline.imageio import write_image
    from pipeline.preview import class_palette, label_overlay, with_legend

    pal = class_palette(class_names)
    lines = []
    for i in range(min(rows, len(dataset))):
        item = dataset[i]
        batch = prepare_batch({k: v[None] if torch.is_tensor(v) else v for k, v in item.items()}, d.device)
        with autocast(d.device, amp):
            pred = model(*inputs(batch)).argmax(1)[0].to(torch.uint8).cpu().numpy()
        rgb = item["rgb"].permute(1, 2, 0).numpy()
        gt = item["label"].numpy()
        tiles = [rgb, label_overlay(rgb, gt, pal), label_overlay(rgb, pred, pal)]
        gap = np.full((rgb.shape[0], 2, 3), 255, np.uint8)
        lines.append(np.concatenate([tiles[0], gap, tiles[1], gap, tiles[2]], axis=1))
    if not lines:
        raise DataError(path, "no val samples to draw")
    gap = np.full((2, lines[0].shape[1], 3), 255, np.uint8)
    grid = np.concatenate(sum(([ln, gap] for ln in lines), [])[:-1], axis=0)
    write_image(path, with_legend(grid, class_names, pal))
    return path
