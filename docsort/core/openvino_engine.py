"""OpenVINO as the inference engine of the features stage: conversion, the on-disk IR cache, compilation.

The Keras model stays the one definition of the network (:mod:`docsort.core.features`). At load, the
whole forward function (uint8 pages -> preprocessing -> InceptionV3 up to the layer -> pooling ->
L2 normalisation) is traced by ``tf.function`` with a static batch shape and handed to
``openvino.convert_model`` (OpenVINO docs, "Converting a TensorFlow Model": in-memory
``tf.function`` objects are accepted), so only ``(batch, D)`` float32 vectors come back from the
engine. The converted model is saved as OpenVINO IR (``model.xml`` + ``model.bin``, weights kept
in float32: ``compress_to_fp16=False``) in a cache folder named by a sha256 over everything that
shapes the graph (:func:`cache_key`), and compiled for ``"CPU"`` with
``INFERENCE_PRECISION_HINT`` = ``bf16`` or ``f32`` (OpenVINO docs, "CPU Device": bf16 runs on
AMX / AVX-512 BF16 where the CPU has them).

Cache folder: ``$DOCSORT_CACHE_DIR/openvino`` when that variable is set, else
``platformdirs.user_cache_path("docsort")/openvino`` (``~/.cache/docsort/openvino`` on Linux).
An entry is written to a temporary folder and renamed into place (atomic on one filesystem); its
``meta.json`` holds the sha256 of the IR files, checked at every load, so a truncated or altered
entry is rebuilt instead of used.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "EngineUnavailable",
    "import_openvino",
    "openvino_version",
    "cpu_flags",
    "supports_bf16",
    "cache_root",
    "cache_key",
    "load_or_convert",
    "compile_for_cpu",
    "CPU_FLAGS_OF_INTEREST",
]

#: /proc/cpuinfo flags that decide how fast (and in which precision) the CPU runs the network.
CPU_FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


class EngineUnavailable(RuntimeError):
    """OpenVINO is missing, too old, or cannot convert or compile the model on this machine."""


def import_openvino():
    """Import and return the ``openvino`` module.

    Raises:
        EngineUnavailable: not installed or failing to import (the reason is in the message).
    """
    try:
        return importlib.import_module("openvino")
    except Exception as exc:  # ImportError, or a broken install raising anything at import
        raise EngineUnavailable(f"OpenVINO cannot be imported ({type(exc).__name__}: {exc})") from exc


def openvino_version() -> str:
    """OpenVINO's runtime version string, e.g. ``"2026.4.1-...".`` Raises EngineUnavailable."""
    return str(import_openvino().get_version())


def cpu_flags() -> list[str]:
    """The flags of :data:`CPU_FLAGS_OF_INTEREST` that the CPU has (sorted; [] where ``/proc/cpuinfo``
    is unreadable), from :func:`docsort.core.runtime.machine`, which the manifest's machine record uses."""
    from docsort.core.runtime import machine

    have = set(machine()["cpu_flags"])
    return sorted(fl for fl in CPU_FLAGS_OF_INTEREST if fl in have)


def supports_bf16(core) -> bool:
    """Whether OpenVINO's CPU plugin reports ``BF16`` in ``OPTIMIZATION_CAPABILITIES`` (AMX or AVX-512 BF16)."""
    try:
        return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:
        return False


def cache_root() -> Path:
    """Folder of the IR cache: ``$DOCSORT_CACHE_DIR/openvino`` or the user cache dir's ``docsort/openvino``."""
    base = os.environ.get("DOCSORT_CACHE_DIR")
    if base:
        return Path(base).expanduser() / "openvino"
    import platformdirs

    return platformdirs.user_cache_path("docsort") / "openvino"


def cache_key(parts: dict[str, Any]) -> str:
    """sha256 (hex, first 32 characters) of the JSON of ``parts`` with sorted keys.

    ``parts`` must name everything the converted graph depends on: weights sha256 (or the seed of
    random weights), layer, input size, channels, pooling, preprocessing, static batch size, and
    the OpenVINO, Keras and docsort versions. Precision is not part of it: the IR keeps float32
    weights and the precision is chosen when it is compiled.
    """
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_entry(ov, entry: Path):
    """Read a cache entry after checking its files' sha256; ``None`` when absent or damaged."""
    meta_path = entry / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        for name in ("model.xml", "model.bin"):
            if _sha256(entry / name) != meta["files"][name]:
                return None
        return ov.Core().read_model(str(entry / "model.xml"))
    except Exception:
        return None


def load_or_convert(
    parts: dict[str, Any], convert: Callable[[], Any], *, log: Callable[[str], None] | None = None
) -> tuple[Any, bool, Path]:
    """The converted model for ``parts`` from the cache, converting and storing it on a miss.

    Args:
        parts: what the graph depends on (:func:`cache_key`); stored in the entry's ``meta.json``.
        convert: returns a fresh ``openvino.Model`` (called only on a miss or a damaged entry).
        log: told when a damaged entry is rebuilt.

    Returns:
        ``(model, hit, entry_folder)``; ``hit`` is True when the cache served it.

    Raises:
        EngineUnavailable: OpenVINO missing, or the conversion failed.
    """
    ov = import_openvino()
    root = cache_root()
    entry = root / cache_key(parts)
    model = _read_entry(ov, entry)
    if model is not None:
        return model, True, entry
    if entry.exists():
        if log:
            log(f"notice: rebuilding the damaged OpenVINO cache entry {entry}")
        shutil.rmtree(entry, ignore_errors=True)
    try:
        model = convert()
    except Exception as exc:
        raise EngineUnavailable(f"openvino.convert_model failed ({type(exc).__name__}: {str(exc)[:300]})") from exc
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
        try:
            ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
            meta = {"parts": parts, "files": {n: _sha256(tmp / n) for n in ("model.xml", "model.bin")}}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
            try:
                os.rename(tmp, entry)  # atomic; fails if another process stored it first
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    except OSError as exc:  # a read-only or full cache folder: run from memory, uncached
        if log:
            log(f"notice: cannot write the OpenVINO cache under {root} ({exc}); converting at every load")
    return model, False, entry


def _type_name(t) -> str:
    """``"bf16"`` / ``"f32"`` for an ``openvino.Type`` (its ``to_string()``), else ``str(t)``."""
    return t.to_string() if hasattr(t, "to_string") else str(t)


def compile_for_cpu(model, precision: str, threads: int = 0):
    """Compile a converted model for the CPU.

    Args:
        model: an ``openvino.Model`` with a static input shape.
        precision: ``"bfloat16"`` or ``"float32"`` (OpenVINO ``INFERENCE_PRECISION_HINT`` bf16 / f32).
        threads: ``INFERENCE_NUM_THREADS``; 0 = OpenVINO's default (all cores).

    Returns:
        ``(compiled_model, properties)``, properties being the precision and thread/stream
        settings the plugin reports after compiling.

    Raises:
        EngineUnavailable: compilation failed.
    """
    ov = import_openvino()
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": {"bfloat16": "bf16", "float32": "f32"}[precision],
        # One request at a time, each using every thread it is given: pages arrive in batches from
        # the rendering workers, and the batch is already the unit of parallel work.
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
    }
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    try:
        compiled = ov.Core().compile_model(model, "CPU", config)
        props = {
            "inference_precision": _type_name(compiled.get_property("INFERENCE_PRECISION_HINT")),
            "threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
            "streams": int(compiled.get_property("NUM_STREAMS")),
        }
    except Exception as exc:
        raise EngineUnavailable(f"OpenVINO cannot compile the model for the CPU ({type(exc).__name__}: {str(exc)[:300]})") from exc
    return compiled, props
