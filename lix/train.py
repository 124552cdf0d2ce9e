"""Supervised training of the RGB + X teacher and the RGB-only student, in small named pieces
(as torchvision's references): ``build_loaders`` (lix/loaders.py), ``build_model``
(lix/model_factory.py), ``train_one_epoch`` (here), ``evaluate`` (lix/evaluate.py), ``fit`` (here);
``evaluate_checkpoint`` (lix/evaluate.py) for a finished run; the run config, its digests and the
resume modes in lix/provenance.py.

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
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from lix.checkpoint import (
    check_resume_config,
    export_safetensors,
    load_resume_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from lix.config import TrainConfig
from lix.evaluate import evaluate, scalar_metrics
from lix.inputs import Inputs
from lix.loaders import build_loaders, prepare_batch, set_loader_epoch
from lix.model_factory import build_model
from lix.provenance import code_digest, provenance, resume_mode, run_config, same_run
from lix.reduce import global_mean
from lix.runtime import DistInfo, ProgressBar, autocast, barrier, init_distributed, seed_everything
from pipeline.atomic import write_json
from pipeline.constants import IGNORE_INDEX
from pipeline.errors import ConfigError, LixError

log = logging.getLogger(__name__)

ROLES = ("teacher", "student")
# files of an earlier run that a fresh run removes first, so that none passes for one of this run
RUN_FILES = ("last.pt", "best.pt", "model.safetensors", "summary.json", "metrics.json", "failed.json")


class NonFiniteLoss(LixError):
    """A loss term became NaN or infinite; the run stopped before the optimizer step."""

    def __init__(self, epoch: int, step: int, terms: dict[str, float], kept: Path | None = None):
        self.epoch, self.step, self.terms, self.kept = epoch, step, terms, kept
        bad = {k: v for k, v in terms.items() if not math.isfinite(v)}
        named = {k: v for k, v in bad.items() if k != "loss"} or bad
        where = f"the last good checkpoint {kept} is kept" if kept else "no checkpoint was written yet"
        super().__init__(f"non-finite loss at epoch {epoch} step {step}: "
                         + ", ".join(f"{k} = {v}" for k, v in named.items()) + f"; training stopped, {where}")


# --------------------------------------------------------------------------- model
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

# --------------------------------------------------------------------------- run state
@dataclass
class Run:
    """A run as built and checked before anything is written: its loaders, resolved config and
    task, and the checkpoint it resumes from (None: a fresh start)."""

    train_loader: DataLoader
    val_loader: DataLoader
    class_names: list[str]
    config: dict
    task: Task
    ckpt: dict | None


@dataclass
class TrainState:
    """Where the run stands: epochs and optimizer steps done, the per-epoch records, the best val
    mIoU and its epoch, evaluations without improvement, and the full val metrics of the best
    epoch when this process evaluated it (``best_val``)."""

    epoch: int = 0
    step: int = 0
    bad_evals: int = 0
    history: list[dict] = dataclasses.field(default_factory=list)
    best: dict = dataclasses.field(default_factory=lambda: {"miou": -1.0, "epoch": 0})
    best_val: dict | None = None


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
    resume = resume_mode(resume)
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
    run = _build_run(shard_dir, out_dir, cfg, dataset, role, resume, progress, verify, d, task_factory, code)
    task, config, last = run.task, run.config, out_dir / "last.pt"
    optimizer = build_optimizer(cfg, task.module)
    scheduler = build_scheduler(cfg, optimizer)
    resumed, state = run.ckpt is not None, TrainState()
    if resumed:
        state = _restore(run.ckpt, task, optimizer, scheduler, cfg, d)
        if d.is_main:
            log.info("resuming %s from %s at epoch %d of %d (step %d)", role, last, state.epoch, cfg.epochs,
                     state.step)
        run.ckpt = None  # the weights and optimizer state are loaded: free the copy
    train_model, _ = place_model(task.module, cfg, d)
    channels_last = cfg.channels_last and d.device.type == "cuda"
    n_classes = len(run.class_names)

    def validate(**kw) -> dict:
        return evaluate(task.student, run.val_loader, task.inputs, n_classes, d=d, amp=cfg.amp,
                        channels_last=channels_last, resolution=cfg.resolution, **kw)

    # Fail fast: two validation batches through the net before any training (shapes, classes).
    validate(max_batches=2)

    origin = provenance(config, code) if d.is_main else {}
    live = _start_logging(out_dir, config, resumed) if d.is_main else None
    try:
        while _stop_reason(state.epoch, cfg, state.bad_evals) is None:
            set_loader_epoch(run.train_loader, state.epoch)
            lr = optimizer.param_groups[0]["lr"]
            try:
                stats, state.step = train_one_epoch(train_model, task.loss_fn, optimizer, run.train_loader,
                                                    state.epoch, state.step, d=d, amp=cfg.amp,
                                                    channels_last=channels_last, progress=progress)
            except NonFiniteLoss as e:
                raise NonFiniteLoss(e.epoch, e.step, e.terms, last if last.is_file() else None) from None
            scheduler.step()
            state.epoch += 1
            record = {"epoch": state.epoch, "step": state.step, "lr": lr,
                      **{f"train/{k}": v for k, v in stats.items()}}
            improved = False
            if state.epoch % cfg.eval_every == 0 or state.epoch >= cfg.epochs:
                improved = _evaluate_epoch(record, state, task, lambda: validate(progress=progress))
            state.history.append(record)
            ckpt = _checkpoint(task, optimizer, scheduler, state, cfg, config, origin, d)
            if d.is_main:
                _save_epoch(out_dir, ckpt, improved, config)
                if live is not None:
                    _log_epoch(live, record)
                log.info("%s", epoch_line(record, cfg.epochs, state.best))  # after last.pt: the line means it is kept
            barrier(d)
    finally:
        if live is not None:
            live.end()
    summary = _summary(state, cfg, run, origin)
    if d.is_main:
        write_json(out_dir / "summary.json", summary, sort_keys=False, nan_as_null=True)
    barrier(d)
    # not in summary.json: the confusion matrix of best.pt's own evaluation, so that the CLI's
    # evaluate_checkpoint need not run the val split again (on the CPU it equals a fresh pass: the
    # same weights, the same deterministic pass; tests/test_train.py checks; on CUDA the trainer's
    # pass used channels_last, a difference of rounding only)
    if state.best_val is not None and state.best_val["epoch"] == state.best["epoch"]:
        summary = {**summary, "best_val": state.best_val}
    return summary


def _build_run(shard_dir: Path, out_dir: Path, cfg: TrainConfig, dataset: str, role: str, resume: str,
               progress: bool, verify: str, d: DistInfo, task_factory: Callable[..., Task], code: str) -> Run:
    """Loaders, model, task and the resolved run config, and the checkpoint of ``out_dir`` to
    resume from when ``resume`` says so; a fresh run removes the earlier run's files (only then:
    nothing is removed before the config, the data, the model and the method were built)."""
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

    def make_task(model: nn.Module, resumed: bool) -> Task:
        return task_factory(model, inputs, d, cfg=cfg, train_loader=train_loader, val_loader=val_loader,
                            out_dir=out_dir, resumed=resumed, progress=progress)

    model = make_model()
    last = out_dir / "last.pt"
    ckpt = load_resume_checkpoint(last, out_dir / "best.pt") if resume != "never" and last.is_file() else None
    task = make_task(model, ckpt is not None)
    config |= task.config
    if ckpt is not None and resume == "if_same":
        why = same_run(ckpt, config, code)
        if why:
            if d.is_main:
                log.info("%s: the run changed since %s (%s): starting afresh", out_dir, last, ", ".join(why))
            ckpt = None
            task = make_task(make_model(), False)
            config = run_config(cfg, dataset, role, class_names, d.world_size) | task.config
    if ckpt is not None:
        check_resume_config(last, ckpt["config"], config)
        if d.is_main and "code" in same_run(ckpt, config, code):
            log.warning("%s was trained by other code than this checkout's; resuming anyway (--resume)", last)
    elif d.is_main:  # a fresh run: no file of an earlier run may pass for one of this run
        for name in RUN_FILES:
            (out_dir / name).unlink(missing_ok=True)
    return Run(train_loader, val_loader, class_names, config, task, ckpt)

def _restore(ckpt: dict, task: Task, optimizer: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LRScheduler, cfg: TrainConfig, d: DistInfo) -> TrainState:
    """Load the checkpoint's weights, optimizer, scheduler and this rank's RNG state; return its progress."""
    task.student.load_state_dict(ckpt["model"])
    for name, module in task.extra.items():
        module.load_state_dict(ckpt["extra"][name])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    state = TrainState(ckpt["epoch"], ckpt["step"], ckpt["bad_evals"], list(ckpt["history"]), dict(ckpt["best"]))
    rngs = ckpt["rng"]
    if len(rngs) == d.world_size:
        set_rng_state(rngs[d.rank])
    else:  # world_size is part of the config, so only a hand-edited file gets here
        seed_everything(cfg.seed + d.rank + 1000 * state.epoch)
    return state


def _start_logging(out_dir: Path, config: dict, resumed: bool):
    """Rank 0: ``config.json`` and the dvclive logger (None without dvclive)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "config.json", config, sort_keys=False, nan_as_null=True)
    try:
        from dvclive import Live
    except ImportError:  # e.g. a bare GPU box without DVC: the run's summary.json still holds the history
        log.warning("dvclive is not installed: no per-epoch dvclive logs for %s", out_dir)
        return None
    return Live(dir=str(out_dir / "dvclive"), resume=resumed, save_dvc_exp=False, dvcyaml=False)


def _evaluate_epoch(record: dict, state: TrainState, task: Task, validate: Callable[[], dict]) -> bool:
    """Validate after an epoch: val metrics (and the task's monitor) into ``record``, the best
    epoch and the patience count into ``state``. Returns whether the val mIoU improved."""
    t0 = time.perf_counter()
    full = validate()
    metrics = scalar_metrics(full)
    record |= {f"val/{k}": v for k, v in metrics.items()} | {"val/seconds": time.perf_counter() - t0}
    if task.monitor is not None:
        record |= {f"val/{k}": v for k, v in task.monitor(task.student).items()}
    improved = metrics["miou"] > state.best["miou"]  # a NaN mIoU is no improvement
    if improved:
        state.best, state.bad_evals = {"miou": metrics["miou"], "epoch": state.epoch}, 0
        state.best_val = {"epoch": state.epoch, **full}
    else:
        state.bad_evals += 1
    return improved


def _checkpoint(task: Task, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                state: TrainState, cfg: TrainConfig, config: dict, origin: dict, d: DistInfo) -> dict:
    """What ``last.pt`` / ``best.pt`` hold (lix/checkpoint.py); every rank takes part (RNG states)."""
    return {"model": task.student.state_dict(), "extra": {k: m.state_dict() for k, m in task.extra.items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "epoch": state.epoch, "step": state.step, "rng": _gather_rng(d),
            "loader": {"seed": cfg.seed, "epoch": state.epoch}, "config": config, "history": state.history,
            "best": state.best, "bad_evals": state.bad_evals,
            "stopped": _stop_reason(state.epoch, cfg, state.bad_evals), "code_digest": origin.get("code_digest")}


def _save_epoch(out_dir: Path, ckpt: dict, improved: bool, config: dict) -> None:
    """Rank 0: ``last.pt``; when the val mIoU improved also ``best.pt`` and ``model.safetensors``."""
    save_checkpoint(out_dir / "last.pt", ckpt)
    if improved:
        save_checkpoint(out_dir / "best.pt", ckpt)
        export_safetensors(ckpt["model"], out_dir / "model.safetensors", config)


def _summary(state: TrainState, cfg: TrainConfig, run: Run, origin: dict) -> dict:
    """What ``summary.json`` holds: the best epoch, where the run stopped, the last record, provenance."""
    history = state.history
    return {"best_miou": state.best["miou"], "best_epoch": state.best["epoch"], "epochs": state.epoch,
            "steps": state.step, "stopped": _stop_reason(state.epoch, cfg, state.bad_evals),
            "seconds_per_epoch": (sum(h["train/seconds"] for h in history) / len(history)) if history else None,
            "last": history[-1] if history else None,
            "samples": {"train": len(run.train_loader.dataset), "val": len(run.val_loader.dataset)},
            "provenance": origin}


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
