"""Blocks of devices spread over worker processes, results in block order.

The population generator and the what-if lab both cut devices into ranges and run a pure function
of (lo, hi) per range; the output must not depend on how many processes ran it. One helper keeps
that promise (results are collected in range order) and reports progress as ranges finish.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

__all__ = ["map_blocks"]

T = TypeVar("T")


def map_blocks(
    task: Callable[[int, int], T],
    ranges: Sequence[tuple[int, int]],
    workers: int,
    progress: Callable[[int, int], None] | None = None,
) -> list[T]:
    """`task(lo, hi)` for every range, in processes when `workers` > 1 (task must pickle: a
    module-level function or a `functools.partial` of one); progress(hi, last hi) after each."""
    total = ranges[-1][1] if ranges else 0
    results: list[T] = []
    if workers > 1 and len(ranges) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context(method)) as pool:
            futures = [pool.submit(task, lo, hi) for lo, hi in ranges]
            for fut, (_, hi) in zip(futures, ranges, strict=True):
                results.append(fut.result())
                if progress is not None:
                    progress(hi, total)
    else:
        for lo, hi in ranges:
            results.append(task(lo, hi))
            if progress is not None:
                progress(hi, total)
    return results
