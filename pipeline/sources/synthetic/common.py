"""Shared plumbing for the synthetic dataset writers: seeding, parallel frames, encodings."""

from __future__ import annotations

import multiprocessing as mp
import zlib
from typing import Callable, Iterable, Sequence

import numpy as np

from pipeline.progress import progress_bar


def frame_rng(seed: int, tag: str, *index: int) -> np.random.Generator:
    """A generator that depends only on (seed, tag, index): frames are identical whatever
    the number of workers or the order they run in."""
    return np.random.default_rng([seed, zlib.crc32(tag.encode()), *index])


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
