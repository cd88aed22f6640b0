"""Which InceptionV3 weights docsort uses, where they come from, and how they are checked.

Policies (``FeatureSettings.weights``):

``imagenet``
    The official Keras ImageNet ``notop`` weights, fetched once with ``keras.utils.get_file`` and
    cached in ``~/.keras/models``. Keras publishes only an md5 for this file
    (``bcbd6486424b2319ff4ef7d526e38f63``, keras/src/applications/inception_v3.py);
    ``get_file`` verifies it, then docsort computes the file's sha256, checks it against
    ``FeatureSettings.weights_sha256`` when a pipeline pins one, and records it in the collection
    manifest (a collection then refuses vectors from any other file). No sha256 is recorded in the
    code for this file: Keras publishes only the md5, and the file cannot be fetched offline to
    compute one. Preprocessing: Keras' ``inception_v3.preprocess_input`` (x/127.5 - 1).
``bundled``
    ``docsort/weights/inception_v3_mixed1_nsfwjs.weights.h5``: the layers up to ``mixed1`` only
    (~0.71 M parameters), converted by ``tools/convert_nsfwjs_weights.py`` from the npm package
    ``nsfwjs@4.4.0`` (MIT; see ``NOTICE-nsfwjs.txt``): a Keras InceptionV3 initialised from
    ImageNet and fine-tuned end to end as a 5-class image classifier, 8-bit quantized. Its
    batch-norm statistics show it was trained on x/255 inputs, so its preprocessing is ``unit``
    (x/255). It is the one pretrained InceptionV3 reachable without internet.
``auto`` (default)
    ``imagenet`` when cached or fetchable, else ``bundled``, announced on stderr and recorded in the
    manifest; never silent.
``random``
    Keras' initialisers under a fixed seed. For tests only; docsort says so on stderr.
a path
    A local ``.h5``/``.weights.h5`` with either the full ``notop`` InceptionV3 or just the layers
    up to ``mixed1``. Its sha256 is checked against ``FeatureSettings.weights_sha256`` when given
    and always recorded.

Every file that docsort knows is checked against the sha256 in :data:`KNOWN_SHA256` before use.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from docsort.core.pages import sha256_file as file_sha256

__all__ = [
    "WeightsError",
    "ResolvedWeights",
    "BUNDLED_WEIGHTS",
    "KNOWN_SHA256",
    "IMAGENET_NOTOP_URL",
    "IMAGENET_NOTOP_MD5",
    "resolve_weights",
    "file_sha256",
    "sidecar_path",
    "read_sidecar",
]

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"  # docsort/weights/, package data
BUNDLED_WEIGHTS = WEIGHTS_DIR / "inception_v3_mixed1_nsfwjs.weights.h5"

IMAGENET_NOTOP_FILE = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_NOTOP_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/" + IMAGENET_NOTOP_FILE
)
# The hash Keras itself publishes for the file (keras/src/applications/inception_v3.py).
IMAGENET_NOTOP_MD5 = "bcbd6486424b2319ff4ef7d526e38f63"

#: sha256 of every weights file docsort ships or knows, checked before the file is used.
KNOWN_SHA256: dict[str, str] = {
    BUNDLED_WEIGHTS.name: "75d512d2cdd44e14af1dd74f22c2211690e0e71c653c813fb794e5e3d072edf7",
}

#: Input scaling each weights source was trained with (see :func:`docsort.core.features.preprocess`).
PREPROCESSING = {"imagenet": "inception", "bundled": "unit", "random": "inception", "path": "inception"}


class WeightsError(RuntimeError):
    """Weights cannot be obtained or fail their checksum. The message says which and why."""


@dataclass(frozen=True)
class ResolvedWeights:
    """The weights a backbone is built with.

    Attributes:
        source: ``imagenet`` | ``bundled`` | ``random`` | ``path``.
        path: the weights file, or ``None`` for ``random``.
        sha256: hex sha256 of ``path`` (``None`` for ``random``).
        preprocessing: ``inception`` (x/127.5 - 1) or ``unit`` (x/255).
        scope: ``full`` (a whole ``notop`` InceptionV3 file) or ``truncated`` (layers up to
            ``mixed1`` only).
        note: a human-readable line announcing the choice, printed on stderr.
    """

    source: str
    path: Path | None
    sha256: str | None
    preprocessing: str
    scope: str
    note: str


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """The JSON file that describes a weights file made by docsort (``docsort adapt``):
    ``<file>.json`` next to it, with ``sha256`` (of the weights file), ``preprocessing``
    (``unit`` | ``inception``), ``scope`` and the base weights it was trained from."""
    return Path(str(path) + ".json")


def read_sidecar(path: str | os.PathLike[str]) -> dict | None:
    """The sidecar of a weights file (:func:`sidecar_path`), or ``None`` when there is none.

    Raises:
        WeightsError: the sidecar exists but is not a JSON object.
    """
    import json

    side = sidecar_path(path)
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{side}: unreadable weights sidecar: {exc}") from exc
    if not isinstance(data, dict):
        raise WeightsError(f"{side}: weights sidecar is not a JSON object")
    return data


def _check(path: Path, expected: str | None) -> str:
    actual = file_sha256(path)
    if expected is not None and actual != expected.lower():
        raise WeightsError(
            f"{path}: sha256 mismatch: expected {expected.lower()}, got {actual}. "
            "The file is corrupt or not the weights docsort expects; refusing to use it."
        )
    return actual


def _bundled() -> ResolvedWeights:
    if not BUNDLED_WEIGHTS.is_file():
        raise WeightsError(f"{BUNDLED_WEIGHTS}: bundled weights missing from the installation")
    sha = _check(BUNDLED_WEIGHTS, KNOWN_SHA256[BUNDLED_WEIGHTS.name])
    return ResolvedWeights(
        source="bundled",
        path=BUNDLED_WEIGHTS,
        sha256=sha,
        preprocessing=PREPROCESSING["bundled"],
        scope="truncated",
        note=(
            "using the offline bundled InceptionV3 weights (layers up to mixed1, converted from "
            "nsfwjs@4.4.0: ImageNet-initialised, fine-tuned, 8-bit quantized), not the official "
            "ImageNet weights"
        ),
    )


def _imagenet(allow_download: bool, expected_sha256: str | None = None) -> ResolvedWeights:
    from docsort.core.runtime import quiet_native_stderr, quiet_stdout

    with quiet_native_stderr():
        import keras

    cache = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models" / IMAGENET_NOTOP_FILE
    if not cache.is_file() and not allow_download:
        raise WeightsError(f"ImageNet weights not cached at {cache}")
    try:
        with quiet_stdout():  # get_file prints "Downloading data from URL" before it knows
            path = Path(keras.utils.get_file(
                IMAGENET_NOTOP_FILE,
                IMAGENET_NOTOP_URL,
                cache_subdir="models",
                file_hash=IMAGENET_NOTOP_MD5,
            ))
    except Exception as exc:  # URLError, HTTPError, hash mismatch (ValueError)...
        raise WeightsError(
            f"cannot fetch the ImageNet InceptionV3 weights from {IMAGENET_NOTOP_URL}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    # get_file checked Keras' published md5; sha256 is what the manifest records and compares.
    sha = _check(path, expected_sha256 or KNOWN_SHA256.get(IMAGENET_NOTOP_FILE))
    return ResolvedWeights(
        source="imagenet",
        path=path,
        sha256=sha,
        preprocessing=PREPROCESSING["imagenet"],
        scope="full",
        note=f"using the official Keras ImageNet InceptionV3 weights ({path})",
    )


def resolve_weights(spec: str, expected_sha256: str | None = None, *, announce: bool = True) -> ResolvedWeights:
    """Turn a weights setting into a verified weights file.

    Args:
        spec: ``auto`` | ``imagenet`` | ``bundled`` | ``random`` | a path to a ``.h5`` file.
        expected_sha256: for a path, the sha256 it must have (optional).
        announce: print the choice on stderr (``auto`` falling back to ``bundled``, ``random``).

    Returns:
        A :class:`ResolvedWeights`.

    Raises:
        WeightsError: the file is missing, cannot be fetched (``imagenet`` offline), or its
            sha256 does not match.
    """
    spec = spec.strip()
    if spec == "bundled":
        resolved = _bundled()
    elif spec == "imagenet":
        resolved = _imagenet(allow_download=True, expected_sha256=expected_sha256)
    elif spec == "auto":
        allow = os.environ.get("DOCSORT_OFFLINE", "") not in ("1", "true", "yes")
        try:
            resolved = _imagenet(allow_download=allow, expected_sha256=expected_sha256)
        except WeightsError as exc:
            bundled = _bundled()
            resolved = ResolvedWeights(
                **{**bundled.__dict__, "note": f"ImageNet weights unavailable ({_short(exc)}); {bundled.note}"}
            )
    elif spec == "random":
        resolved = ResolvedWeights(
            source="random",
            path=None,
            sha256=None,
            preprocessing=PREPROCESSING["random"],
            scope="full",
            note="using RANDOM (seeded, untrained) weights: for tests only, features are not meaningful",
        )
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise WeightsError(f"{path}: weights file not found")
        sha = _check(path, expected_sha256 or KNOWN_SHA256.get(path.name))
        side = read_sidecar(path)
        if side is not None and side.get("sha256") != sha:
            raise WeightsError(f"{path}: sha256 {sha} does not match its sidecar {sidecar_path(path).name} "
                               f"({side.get('sha256')}); the file was changed or only half written")
        preprocessing = (side or {}).get("preprocessing") or (
            PREPROCESSING["bundled"] if path.name == BUNDLED_WEIGHTS.name else PREPROCESSING["path"])
        resolved = ResolvedWeights(
            source="path",
            path=path.resolve(),
            sha256=sha,
            preprocessing=preprocessing,
            scope=(side or {}).get("scope", "unknown"),
            note=f"using weights from {path} (sha256 {sha[:12]}...)",
        )
    if announce and resolved.source in ("bundled", "random"):
        print(f"docsort: {resolved.note}", file=sys.stderr)
    return resolved


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) < 160 else text[:157] + "..."
