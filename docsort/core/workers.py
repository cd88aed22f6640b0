"""Process pools for docsort's CPU-bound stages (rasterization, OCR): pebble's ``ProcessPool``, in
which a worker that dies (a crash in a decoder, the OOM killer) fails only the task it was running
(``pebble.ProcessExpired``) and is replaced, while the other tasks go on
(https://pebble.readthedocs.io, "Pools").

Workers are started with ``spawn`` (no fork of a process that has loaded TensorFlow or OpenMP) and
without the caller's ``__main__`` (:func:`docsort.core.pages.without_main_module`), also when pebble
replaces a dead worker from its manager thread.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
from collections.abc import Callable, Sequence
from typing import Any

from pebble import ProcessExpired, ProcessPool

from docsort.core.pages import without_main_module

__all__ = ["ProcessExpired", "worker_pool", "in_worker"]


class _HiddenMainProcess(multiprocessing.context.SpawnProcess):
    """A ``spawn`` process started without the parent's ``__main__``: a user's script that calls
    docsort without an ``if __name__ == "__main__":`` guard is not re-run in every worker."""

    def start(self) -> None:
        with without_main_module():
            super().start()


class _HiddenMainContext(multiprocessing.context.SpawnContext):
    Process = _HiddenMainProcess


def in_worker() -> bool:
    """True inside a worker process (where no pool may be started)."""
    return multiprocessing.parent_process() is not None


def worker_pool(workers: int, initializer: Callable[..., Any] | None = None, initargs: Sequence[Any] = ()) -> ProcessPool:
    """A pebble ``ProcessPool`` of ``workers`` ``spawn``-ed processes, each running
    ``initializer(*initargs)`` first. Tasks go in with ``pool.schedule(fn, args=...)``; a future's
    ``result()`` raises ``ProcessExpired`` when its worker died. Close it with ``pool.close();
    pool.join()``, or ``pool.stop(); pool.join()`` to drop what is left.

    Raises:
        ValueError: ``workers`` < 1.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    return ProcessPool(max_workers=workers, initializer=initializer, initargs=tuple(initargs), context=_HiddenMainContext())

