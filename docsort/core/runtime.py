"""How docsort talks to the terminal: the one place that sets what must be set before TensorFlow loads.

TensorFlow's C++ runtime writes to the process's file descriptor 2 while it is being imported
(the oneDNN notice, "Could not find cuda drivers on your machine", absl's "All log messages before
absl::InitializeLog() ..."), and ``TF_CPP_MIN_LOG_LEVEL`` no longer silences those import-time
lines since TensorFlow 2.19 (tensorflow/tensorflow#100442); after import, level 3 does silence its
later messages (``E0000 ... failed call to cuInit`` on a machine without a GPU). A user reads
"E0000 ... CUDA error" as a failure, so docsort:

* sets ``TF_CPP_MIN_LOG_LEVEL=3`` (unless the user set it) when :mod:`docsort` is imported, before
  any module of it imports TensorFlow or Keras (:func:`configure`);
* imports TensorFlow, Keras, TF Hub and umap-learn (which imports TensorFlow for its parametric
  variant) inside :func:`quiet_native_stderr`, which points fd 2 at a temporary file for the
  duration and replays what was captured if the import fails, so nothing is lost when something
  is really wrong;
* keeps its own notices (offline weights, per-file errors, progress bars), which go through
  Python's ``sys.stderr`` after the import.

``DOCSORT_LOG=debug`` (the CLI's ``--verbose``) turns all of this off: TensorFlow's log reaches the
terminal as TensorFlow writes it.
"""

from __future__ import annotations

import contextlib
import io
import os
# Python's sqlite3 must be loaded before TensorFlow: TensorFlow's shared libraries bring their own
# SQLite without FTS5, and an `import sqlite3` after `import tensorflow` binds to it ("no such
# module: fts5" in docsort.store.storage; seen with TensorFlow 2.21). docsort imports this module first.
import sqlite3  # noqa: F401
import sys
import tempfile
from collections.abc import Iterator

__all__ = ["configure", "verbose", "quiet_native_stderr", "quiet_stdout", "machine", "CPU_FLAGS_OF_INTEREST", "CROSS_MACHINE_VECTOR_TOLERANCE", "REPRODUCIBILITY"]


def verbose() -> bool:
    """True when the user asked for the libraries' own log (``DOCSORT_LOG=debug``)."""
    return os.environ.get("DOCSORT_LOG", "").strip().lower() in ("debug", "verbose", "1", "true")


def configure() -> None:
    """Set the environment TensorFlow reads at import (idempotent; a user's own setting wins).

    ``TF_CPP_MIN_LOG_LEVEL``: 3 (errors hidden too: on a CPU-only machine TensorFlow's only
    "errors" are the failed CUDA probes) unless :func:`verbose`, then 0.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose() else "3")


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Silence what C/C++ code writes to file descriptor 2 inside the block.

    Python's ``sys.stderr`` is flushed first and keeps working (it writes to the same fd, so its
    output inside the block is captured too: keep the block to imports and device probes). What
    was captured is written back to the real stderr when the block raises. A no-op when
    :func:`verbose`, or when fd 2 cannot be duplicated (no real stderr, e.g. some test runners).
    """
    if verbose():
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            captured = sink.read().decode("utf-8", "replace")
            if captured.strip():
                sys.stderr.write(captured)
                sys.stderr.flush()
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Swallow Python-level prints to ``sys.stdout`` inside the block (Keras' ``get_file`` prints
    "Downloading data from URL" before it knows whether the download works). No-op when
    :func:`verbose`."""
    if verbose():
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield


configure()


#: Largest difference, per vector component, between the same page's L2-normalised vectors computed
#: in float32 by other kernels for the same network and weights (another CPU's instruction set,
#: TensorFlow's Eigen kernels instead of oneDNN, Keras on JAX, OpenVINO float32): 4x the largest
#: seen (benchmarks/RESULTS.md, "Reproducibility across kernels and CPUs (issue 12)"). Vectors
#: that close still give other UMAP embeddings, so clusters may differ. Another *precision*
#: (bfloat16) differs more; the collection's engine probe decides whether such vectors may be
#: mixed (``docsort.store.manifest.ENGINE_PROBE_MIN_COSINE``).
CROSS_MACHINE_VECTOR_TOLERANCE = 1e-6

#: What a collection's manifest says is reproducible (README, "Reproducible").
REPRODUCIBILITY = {
    "same_machine": "same files, settings, library versions and machine: bit-identical vectors, neighbours and clusters",
    "other_cpu": f"same engine and precision: vectors equal within {CROSS_MACHINE_VECTOR_TOLERANCE:g} per component "
                 "(max abs); another precision (bfloat16 where the CPU has AMX or AVX-512 BF16, float32 elsewhere): "
                 "cosine >= 0.9999, checked by the engine probe before vectors are mixed; either way UMAP, and so "
                 "HDBSCAN's clusters, may differ (numba compiles other code for another CPU)",
}

#: CPU flags (Linux ``/proc/cpuinfo`` names) that change which kernels oneDNN, OpenBLAS, FAISS and
#: numba run, and so the last bits of vectors and UMAP embeddings.
CPU_FLAGS_OF_INTEREST = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                         "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve")


def machine() -> dict:
    """Describe the machine a collection was built on, for its manifest.

    Returns:
        ``{"cpu": model name, "cpu_flags": [flags of CPU_FLAGS_OF_INTEREST present], "cores":
        logical CPUs, "arch": platform.machine(), "os": platform.platform()}``. On systems without
        ``/proc/cpuinfo`` the CPU model is ``platform.processor()`` and the flags list is empty.

    Same files, settings, library versions and machine give bit-identical vectors and clusters; on
    a CPU with other flags, vectors agree within a float tolerance and UMAP (numba) may embed, and
    HDBSCAN cluster, differently (README, "Reproducible"): this record says why two runs differ.
    """
    import platform

    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model", "cpu model") and model in ("unknown", "", platform.machine()):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {"cpu": model, "cpu_flags": [f for f in CPU_FLAGS_OF_INTEREST if f in flags], "cores": os.cpu_count(),
            "arch": platform.machine(), "os": platform.platform()}
