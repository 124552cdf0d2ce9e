"""Training checkpoints: one dict, written atomically, read back with ``weights_only=True``.

    {"format": "lix-checkpoint", "version": 1,
     "model": state_dict, "optimizer": ..., "scheduler": ...,
     "epoch": epochs completed, "step": optimizer steps taken,
     "rng": [per rank: {"python", "numpy", "torch", "cuda"}], "loader": {"seed", "epoch"},
     "config": the resolved run config (plain types), "history": [per-epoch metrics],
     "best": {"miou", "epoch"}, "bad_evals": evaluations since the best, "stopped": reason or None}

Everything is a tensor or a plain Python type (RNG states included: numpy's key as an int64
tensor), so ``torch.load(weights_only=True)`` reads it: no pickle of arbitrary objects. The
weights alone export to ``model.safetensors`` (:func:`export_safetensors`), which loads with no
pickle at all.
"""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.atomic import atomic_path
from pipeline.errors import ConfigError, DataError

FORMAT, VERSION = "lix-checkpoint", 1
REQUIRED = ("model", "optimizer", "scheduler", "epoch", "step", "rng", "loader", "config", "history")
# Config keys a resumed run may change: they decide how long or where the run goes, not the
# trajectory of the weights (device: a CPU checkpoint may go on on a GPU, not bit-identically).
# distill.teacher: where the teacher's file is (relative or absolute, moved or copied); the file
# itself is compared by its sha256 (distill.teacher_sha256).
RESUMABLE_KEYS = frozenset({"train.epochs", "train.patience", "train.num_workers", "train.device",
                            "train.compile", "train.eval_every", "distill.teacher"})


class ConfigMismatch(ConfigError):
    """A resume under a config that differs from the checkpoint's; ``keys`` lists the keys."""

    def __init__(self, path: Path, diffs: list[tuple[str, Any, Any]]):
        self.keys = [k for k, _, _ in diffs]
        detail = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, a, b in diffs)
        super().__init__(", ".join(self.keys),
                         f"differ from the checkpoint {path} ({detail}); resume with the checkpoint's "
                         f"values, or start afresh (--no-resume)")


# --------------------------------------------------------------------------- RNG
def rng_state() -> dict:
    """Every RNG state of this process as tensors and plain types."""
    np_state = np.random.get_state(legacy=False)
    version, mt, gauss = random.getstate()
    return {
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
    }


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured (CUDA only where CUDA is in use)."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"],
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


# --------------------------------------------------------------------------- files
def save_checkpoint(path: str | Path, ckpt: dict) -> Path:
    """Write ``ckpt`` to ``path`` atomically (a temporary sibling renamed into place): a crash
    never leaves a half-written file under the final name."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "version": VERSION, **ckpt}, tmp)
    return path


# Types of the entries a loader relies on (checked when present), so that a hand-edited or
# damaged file is refused here, naming it, and not by a TypeError deep in the trainer.
ENTRY_TYPES: dict[str, type] = {
    "model": dict, "optimizer": dict, "scheduler": dict, "epoch": int, "step": int, "rng": list,
    "loader": dict, "config": dict, "history": list, "best": dict, "bad_evals": int, "extra": dict}


def _first_line(e: BaseException) -> str:
    """``Type: first line of the message`` (at most 200 characters); just ``Type`` when the
    message is empty (EOFError from a 0-byte file has none)."""
    text = e.args[0] if isinstance(e, KeyError) and e.args and isinstance(e.args[0], str) else str(e)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__


def _unreadable(e: BaseException) -> str:
    """Why torch.load refused a file, in one line."""
    text = str(e)
    if "Weights only load failed" in text:  # torch's long advice; the one useful line is "Unsupported ..."
        detail = next((ln.strip().removeprefix("WeightsUnpickler error:").strip() for ln in text.splitlines()
                       if "Unsupported" in ln), "")
        if "Unsupported global" in detail:
            return (f"not a readable checkpoint: it holds Python objects a lix checkpoint does not "
                    f"({detail.split(' was not', 1)[0][:200]}; refused by weights_only loading)")
        return f"not a readable checkpoint (not a torch file: {detail[:200] or _first_line(e)})"
    return f"not a readable checkpoint ({_first_line(e)})"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    required: tuple[str, ...] = REQUIRED) -> dict:
    """Read a checkpoint with ``weights_only=True``. DataError naming the file when it is
    missing, unreadable (empty, truncated, not a torch file, objects beyond tensors and plain
    types), not one of ours, lacks one of ``required`` or holds an entry of the wrong type."""
    path = Path(path)
    if path.is_dir():
        raise DataError(path, "is a directory, expected a checkpoint file (best.pt, last.pt)")
    if not path.is_file():
        raise DataError(path, "checkpoint not found")
    try:
        size = path.stat().st_size
        if size == 0:
            raise DataError(path, "not a readable checkpoint (empty file, 0 bytes: an interrupted copy?)")
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": a foreign file, refused below
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except DataError:
        raise
    except Exception as e:  # truncated zip, bad pickle, refused global, I/O: all mean a corrupt file
        raise DataError(path, _unreadable(e)) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        what = f"a dict with keys {sorted(map(str, ckpt))[:8]}" if isinstance(ckpt, dict) else type(ckpt).__name__
        raise DataError(path, f"not a {FORMAT} file (a torch file holding {what}; expected a checkpoint of "
                              f"lix train / lix distill)")
    if ckpt.get("version") != VERSION:
        raise DataError(path, f"checkpoint version {ckpt.get('version')!r}; this code reads version {VERSION}")
    missing = [k for k in required if k not in ckpt]
    if missing:
        raise DataError(path, f"checkpoint lacks {missing}")
    for key, kind in ENTRY_TYPES.items():
        if key in ckpt and (not isinstance(ckpt[key], kind) or (kind is int and isinstance(ckpt[key], bool))):
            raise DataError(path, f"checkpoint entry {key!r} is a {type(ckpt[key]).__name__}, expected "
                                  f"a {kind.__name__}")
    bad = [k for k, v in ckpt.get("model", {}).items() if not (isinstance(k, str) and torch.is_tensor(v))]
    if bad:
        raise DataError(path, f"checkpoint entry 'model' is not a state dict of tensors (entry {bad[0]!r})")
    return ckpt


def load_resume_checkpoint(last: str | Path, best: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """:func:`load_checkpoint` of ``last`` (``<out>/last.pt``) for a resume. When it cannot be
    read, DataError naming it that says how to go on: ``--no-resume`` starts afresh, and, when
    ``best`` (``<out>/best.pt``) loads, that it is intact (with its epoch) and can be copied to
    ``last`` to resume from there."""
    last, best = Path(last), Path(best)
    try:
        return load_checkpoint(last, map_location)
    except DataError as e:
        problem = f"{e.problem}; the checkpoint to resume from is corrupt: start afresh with --no-resume"
    try:
        intact = load_checkpoint(best, "cpu") if best.is_file() and best != last else None
    except DataError:
        intact = None
    if intact is not None:
        problem += (f", or go on from {best} (epoch {intact['epoch']}), which is intact: copy it to {last} "
                    f"and run again")
    raise DataError(last, problem)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 0.1}} -> {"train.lr": 0.1}; tuples become lists (JSON's view)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out


def config_diff(saved: dict, current: dict, ignore=RESUMABLE_KEYS) -> list[tuple[str, Any, Any]]:
    """(key, saved value, current value) for every dotted key that differs, ``ignore`` aside."""
    a, b = flatten(saved), flatten(current)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if k not in ignore and a.get(k) != b.get(k)]


def check_resume_config(path: Path, saved: dict, current: dict) -> None:
    """Refuse (ConfigMismatch naming the keys) to resume under a config that changes the run."""
    diffs = config_diff(saved, current)
    if diffs:
        raise ConfigMismatch(path, diffs)


# --------------------------------------------------------------------------- safetensors
def export_safetensors(state_dict: dict[str, torch.Tensor], path: str | Path, config: dict | None = None) -> Path:
    """Write the weights as safetensors (atomically), the run config as JSON in its metadata."""
    from safetensors.torch import save_file

    # safetensors wants contiguous, unshared tensors: clone each (weights are small next to a run).
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    meta = {"format": "lix-weights", "config": json.dumps(config or {})}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def load_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict, config) from :func:`export_safetensors`'s file; no pickle involved."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "weights file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
        config = json.loads(meta.get("config", "{}"))
    except Exception as e:
        raise DataError(path, f"not a readable safetensors file ({type(e).__name__}: {e})") from None
    return state, config
