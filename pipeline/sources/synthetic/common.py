"""Shared plumbing for the synthetic dataset writers: seeding, parallel frames, encodings."""

from __future__ import annotations

import multiprocessing as mp
import zlib
from typing import Callable, Iterable, Sequence

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


def frame_rng(seed: int, tag: str, *index: int) -> np.random.Generator:
    """A generator that depends only on (seed, tag, index): frames are identical whatever
    the number of workers or the order they run in."""
    return np.random.default_rng([seed, zlib.crc32(tag.encode()), *index])


def progress_bar(description: str, total: int, enabled: bool = True):
    """A rich progress bar context; yields an ``advance()`` callable."""
    prog = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), disable=not enabled, transient=False)
    task = prog.add_task(description, total=total)

    class _Ctx:
        def __enter__(self):
            prog.__enter__()
            return lambda n=1: prog.advance(task, n)

        def __exit__(self, *exc):
            return prog.__exit__(*exc)

    return _Ctx()


def run_jobs(fn: Callable, jobs: Sequence, workers: int, description: str, progress: bool = True) -> list:
    """Map ``fn`` over ``jobs`` (in order) on ``workers`` processes with a progress bar."""
    results = []
    with progress_bar(description, len(jobs), progress) as advance:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                results.append(fn(job))
                advance()
        else:
            with mp.get_context("fork").Pool(workers) as pool:
                for res in pool.imap(fn, jobs, chunksize=max(1, len(jobs) // (workers * 16))):
                    results.append(res)
                    advance()
    return results


def depth_to_cm(depth: np.ndarray, invalid_value: int) -> np.ndarray:
    """(H, W) metres (inf = no surface) -> uint16 centimetres; no surface or out of range ->
    ``invalid_value``."""
    cm = np.round(np.where(np.isfinite(depth), depth, 0.0) * 100.0)
    bad = ~np.isfinite(depth) | (cm >= 65535) | (cm <= 0)
    return np.where(bad, invalid_value, cm).astype(np.uint16)


def lut(mapping: dict[int, int], size: int, fill: int = 0) -> np.ndarray:
    table = np.full(size, fill, dtype=np.int64)
    for k, v in mapping.items():
        table[int(k)] = v
    return table


def split_evenly(n: int, parts: int) -> list[int]:
    """n items into ``parts`` counts that differ by at most one (earlier parts larger)."""
    base, extra = divmod(n, parts)
    return [base + (i < extra) for i in range(parts)]


def chunks(items: Iterable, size: int) -> list[list]:
    items = list(items)
    return [items[i : i + size] for i in range(0, len(items), size)]
