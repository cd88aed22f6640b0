"""Running docsort's stages on a Ray cluster (issue 17): connecting, sizing the actor pool, sampling.

Ray is optional (``pip install 'docsort[ray]'``) and imported only inside these functions, so
docsort without Ray imports nothing of it. The stages themselves (rendering, the feature
extractor, Tesseract, UMAP/HDBSCAN) are the same functions as in one process; this module only
says where they run. Sources: Ray's docs, "Starting Ray" (``ray.init(address=...)``,
``num_cpus``, ``include_dashboard``, ``log_to_driver``) and "Configuring Logging"
(``logging_level``); Ray Data's "Working with GPUs" / ``Dataset.map_batches``
(``concurrency``, ``num_gpus`` of an actor pool).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import numpy as np

from docsort.config.settings import RaySettings

#: Environment variables passed on to Ray workers (``runtime_env``): the offline switch, the
#: quiet TensorFlow, the pipelines path.
_ENV_PREFIXES = ("DOCSORT_", "TF_CPP_MIN_LOG_LEVEL", "OMP_THREAD_LIMIT")


class RayMissingError(RuntimeError):
    """``--ray`` (or ``[ray] address``) was asked for and Ray is not installed."""


def require_ray():
    """Import Ray, or say how to get it.

    Returns:
        The ``ray`` module (with ``ray.data`` imported).

    Raises:
        RayMissingError: Ray (with Ray Data) is not installed.
    """
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data: ``ray[data]``, which brings pyarrow/pandas/fsspec)
    except ImportError as exc:
        raise RayMissingError(
            f"--ray needs Ray, which is not installed ({exc}); install it with: pip install 'docsort[ray]'"
        ) from exc
    return ray


def _worker_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)}


@contextlib.contextmanager
def connected(settings: RaySettings) -> Iterator[object]:
    """Connect to Ray for the length of a ``with`` block; yields the ``ray`` module.

    ``settings.address == "local"`` starts a Ray on this machine (``settings.num_cpus`` CPUs, 0 =
    all) and shuts it down at the end; another address joins that running cluster
    (``ray.init(address=...)``) and disconnects at the end. When this process is already connected
    (``ray.is_initialized()``: a caller, a test or a notebook called ``ray.init``), that connection
    is used and left open. The dashboard is off, worker output is not forwarded to this terminal
    (``log_to_driver=False``), Ray's own logging is at ERROR, and Ray Data's progress bars are
    off (docsort shows its own). One line of Ray's C++ core worker remains, once for every embedding
    actor an ingest's driver starts (one a run here; one per GPU on a cluster): ``E ...
    core_worker.cc: Actor with class name: 'MapWorker(MapBatches(Embed))' ... has constructor
    arguments in the object store and max_restarts > 0`` (ray-project/ray#53727). Every Ray Data
    actor pool gives it: Ray Data passes each actor its function and context as object refs and
    asks for unlimited restarts. No documented switch silences this line alone:
    ``log_to_driver`` and ``logging_level`` govern worker output and Ray's Python loggers only;
    ``RAY_BACKEND_LOG_LEVEL=fatal`` hides it but prints an ``I ... logging.cc: Set ray log level
    ...`` line of its own at every start and hides the driver's real C++ errors too; and
    ``map_batches(max_restarts=0)`` would lose the actor restarts a lost node needs (Ray Data
    relies on them to finish the run). It is left as it is (measured with Ray 2.60).

    Raises:
        RayMissingError: Ray is not installed.
        ConnectionError: (from Ray) no cluster at ``settings.address``.
    """
    ray = require_ray()
    started = False
    for name in ("ray", "ray.data"):  # Ray's and Ray Data's notices (execution finished, progress bars off)
        logging.getLogger(name).setLevel(logging.ERROR)
    if not ray.is_initialized():
        kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                      runtime_env={"env_vars": _worker_env()})
        if settings.address == "local":
            ray.init(address="local", num_cpus=settings.num_cpus or None, **kwargs)  # always a new one
        else:
            ray.init(address=settings.address, **kwargs)
        started = True
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def embed_actor_plan(settings: RaySettings, resources: dict[str, float]) -> tuple[int, float, float, float]:
    """How many feature-extractor actors to start, what each reserves, and what a rendering task reserves.

    Args:
        settings: the ``[ray]`` section.
        resources: ``ray.cluster_resources()`` (``{"CPU": 8.0, "GPU": 2.0, ...}``).

    Returns:
        ``(actors, actor_cpus, actor_gpus, render_cpus)``: one actor per GPU (``num_gpus=1``) when
        the cluster has GPUs, else one per ``cpus_per_actor`` CPUs, leaving ``render_cpus`` CPUs for
        the rendering tasks so they are never starved (at least one actor);
        ``settings.embed_actors > 0`` fixes the count. A cluster with fewer CPUs than
        ``cpus_per_actor + render_cpus`` gives the actor and each rendering task half of them
        (Ray's fractional CPUs), so both always fit.
    """
    gpus = int(resources.get("GPU", 0))
    cpus = float(resources.get("CPU", 1))
    render = settings.render_cpus
    if gpus > 0:
        return (settings.embed_actors or gpus), 1.0, 1.0, render
    if cpus < settings.cpus_per_actor + render:
        return (settings.embed_actors or 1), cpus / 2, 0.0, cpus / 2
    auto = max(1, int((cpus - render) // settings.cpus_per_actor))
    return (settings.embed_actors or auto), settings.cpus_per_actor, 0.0, render


def seeded_sample(n: int, k: int, seed: int) -> np.ndarray:
    """The rows a clustering is fitted on: ``min(n, k)`` distinct indices drawn uniformly with
    ``numpy.random.default_rng(seed)``, sorted.

    Returns:
        int64 (min(n, k),) indices into ``range(n)``.
    """
    if k >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False)).astype(np.int64)
