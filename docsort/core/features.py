"""The *features* stage: page images become L2-normalised float32 feature vectors.

The default backbone is Keras' ``keras.applications.InceptionV3`` (Szegedy et al. 2016,
"Rethinking the Inception Architecture", arXiv:1512.00567) truncated at the layer ``mixed1``, which
is TF-slim's ``InceptionV3/Mixed_5c`` block: at a 299x299 input it outputs a
``(batch, 35, 35, 288)`` map (``mixed0`` = Mixed_5b 35x35x256, ``mixed2`` = Mixed_5d). The map is
reduced by a named pooling (:data:`POOLINGS`) and L2-normalised, so inner product is cosine
similarity in the index.

Written against backend-neutral Keras 3 (``keras.ops``): TensorFlow is the default backend; the
same code runs on JAX or PyTorch (``KERAS_BACKEND``). The forward pass is compiled once per
extractor (``tf.function`` on TensorFlow: ~45 img/s on 2 CPU cores here vs 12-30 for
``model.predict``; ``jax.jit`` on JAX) and takes ``uint8`` pages, normalised on the device. When
a GPU is visible (or ``precision = "bfloat16"``) the model runs under the ``mixed_bfloat16`` policy.

Two engines run the InceptionV3 forward pass (``FeatureSettings.engine``): the Keras backend's
compiler as above (``tensorflow``), or OpenVINO (``openvino``, :mod:`docsort.core.openvino_engine`),
to which the same Keras forward function is converted at load. ``auto`` takes OpenVINO on a CPU.
Every extractor can embed a fixed synthetic :func:`probe_pages` set, which collections store to
check that vectors of another engine or precision still match (:mod:`docsort.store.manifest`).

Any TF2 image feature-vector SavedModel can be the backbone instead (``hub:HANDLE``, loaded with
``tensorflow_hub.load``; TensorFlow backend only). SavedModels contain runnable graphs: only load
ones you trust.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from docsort.core.runtime import quiet_native_stderr  # noqa: E402

with quiet_native_stderr():  # TensorFlow's import-time C++ log (docsort.core.runtime)
    import keras  # noqa: E402
    from keras import ops  # noqa: E402

from docsort.config.settings import FeatureSettings  # noqa: E402
from docsort.core.weights import ResolvedWeights, WeightsError, resolve_weights  # noqa: E402

__all__ = [
    "BackboneError",
    "POOLINGS",
    "pooled_dim",
    "preprocess",
    "build_inception_backbone",
    "FeatureExtractor",
    "validate_hub_handle",
    "probe_pages",
    "PROBE_SEED",
]


class BackboneError(RuntimeError):
    """A backbone cannot be built or loaded (bad handle, missing layer, wrong weights file)."""


# ---------------------------------------------------------------------------------------------
# Pooling: (batch, H, W, C) float -> (batch, D) float. Each is followed by L2 normalisation.
# ---------------------------------------------------------------------------------------------


def _gap(x):
    """Global average pooling: (n, H, W, C) -> (n, C)."""
    return ops.mean(x, axis=(1, 2))


def _gmp(x):
    """Global max pooling: (n, H, W, C) -> (n, C)."""
    return ops.max(x, axis=(1, 2))


def _gap_gmp(x):
    """Average and max concatenated: (n, H, W, C) -> (n, 2C)."""
    return ops.concatenate([_gap(x), _gmp(x)], axis=-1)


def _gem(x, p: float = 3.0, eps: float = 1e-6):
    """Generalised mean pooling with p=3 (Radenovic, Tolias & Chum 2018, arXiv:1711.02512)."""
    return ops.power(ops.mean(ops.power(ops.maximum(x, eps), p), axis=(1, 2)), 1.0 / p)


#: Share of the spatial cells that ``topk`` pooling averages per channel: 3 % is 37 of the
#: 35x35 cells of ``mixed1`` at 299x299. Chosen on the development corpus (benchmarks/RESULTS.md,
#: "Sorting quality"): 1 % behaves like max pooling (fragile), 10 % drifts towards average pooling.
TOPK_FRACTION = 0.03


def _topk(x, fraction: float = TOPK_FRACTION):
    """Top-k mean pooling: each channel's k largest activations averaged, (n, H, W, C) -> (n, C).

    ``k = max(1, round(fraction * H * W))`` (37 at 35x35), so it sits between max pooling (k = 1)
    and average pooling (k = H*W): the k-max pooling of Kalchbrenner, Grefenstette & Blunsom 2014
    (arXiv:1404.2188), averaged as in the top-instance pooling of WELDON (Durand, Thome & Cord,
    CVPR 2016). On docsort's development corpus it sorts clean scans as well as max pooling and,
    unlike it, keeps doing so when pages carry specks and a stain (a speck fills one or two cells,
    not 37; benchmarks/RESULTS.md, "Sorting quality (issue 5)", "Robustness: specks and stains").
    """
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    k = max(1, int(round(fraction * h * w)))
    flat = ops.transpose(ops.reshape(x, (-1, h * w, c)), (0, 2, 1))
    return ops.mean(ops.top_k(flat, k, sorted=False)[0], axis=-1)


def _grid(k: int) -> Callable[[Any], Any]:
    """Spatial k x k average grid (adaptive pooling bins as in PyTorch's AdaptiveAvgPool2d).

    Returns a function (n, H, W, C) -> (n, k*k*C), cells in row-major order; it keeps where on
    the page the ink is, which global pooling throws away.
    """

    def pool(x):
        h, w = x.shape[1], x.shape[2]
        cells = []
        for i in range(k):
            r0, r1 = (i * h) // k, -((-(i + 1) * h) // k)
            for j in range(k):
                c0, c1 = (j * w) // k, -((-(j + 1) * w) // k)
                cells.append(ops.mean(x[:, r0:r1, c0:c1, :], axis=(1, 2)))
        return ops.concatenate(cells, axis=-1)

    pool.__name__ = f"grid{k}"
    return pool


#: Named poolings of the feature map, and the factor by which each multiplies the channels.
POOLINGS: dict[str, tuple[Callable[[Any], Any], int]] = {
    "gap": (_gap, 1),
    "gmp": (_gmp, 1),
    "gap_gmp": (_gap_gmp, 2),
    "gem": (_gem, 1),
    "topk": (_topk, 1),
    "grid2": (_grid(2), 4),
    "grid3": (_grid(3), 9),
}


def pooled_dim(pooling: str, channels: int) -> int:
    """Length of the pooled vector for a pooling name and channel count (288 for ``mixed1``).

    Raises:
        BackboneError: unknown pooling name.
    """
    if pooling not in POOLINGS:
        raise BackboneError(f"unknown pooling {pooling!r}; choose one of {sorted(POOLINGS)}")
    return POOLINGS[pooling][1] * channels


def preprocess(x, scheme: str):
    """Scale ``uint8`` pixels to the range the weights were trained on, on the device.

    Args:
        x: tensor (n, H, W, C) of dtype uint8, C = 1 (grey, repeated to 3) or 3.
        scheme: ``inception`` (x/127.5 - 1, Keras ``inception_v3.preprocess_input``) or ``unit``
            (x/255, the bundled nsfwjs weights and TF Hub image models).

    Returns:
        float32 tensor (n, H, W, 3).
    """
    x = ops.cast(x, "float32")
    if x.shape[-1] == 1:
        x = ops.repeat(x, 3, axis=-1)
    if scheme == "inception":
        return x / 127.5 - 1.0
    if scheme == "unit":
        return x / 255.0
    raise BackboneError(f"unknown preprocessing {scheme!r}")


def _gpu_visible() -> bool:
    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            with quiet_native_stderr():  # "failed call to cuInit" where there is no GPU
                return bool(tf.config.list_physical_devices("GPU"))
        if backend == "jax":
            import jax

            return any(d.platform == "gpu" for d in jax.devices())
        if backend == "torch":
            import torch

            return bool(torch.cuda.is_available())
    except Exception:  # pragma: no cover - a broken GPU stack means CPU
        return False
    return False


def build_inception_backbone(
    weights: ResolvedWeights, layer: str = "mixed1", input_size: tuple[int, int] = (299, 299), seed: int = 0
) -> keras.Model:
    """Build ``keras.applications.InceptionV3(include_top=False)`` truncated at ``layer``.

    Args:
        weights: verified weights from :func:`docsort.core.weights.resolve_weights`.
        layer: Keras layer name to read out (``mixed1`` = Mixed_5c).
        input_size: (height, width) in pixels.
        seed: seed for Keras' initialisers (only matters for ``random`` weights).

    Returns:
        A ``keras.Model`` mapping float32 (n, H, W, 3) to the layer's output; for ``mixed1`` at
        299x299 that is (n, 35, 35, 288).

    Raises:
        BackboneError: unknown layer, or a weights file that does not fit the network.
    """
    keras.utils.set_random_seed(seed)
    h, w = input_size
    base = keras.applications.InceptionV3(include_top=False, weights=None, input_shape=(h, w, 3))
    try:
        out = base.get_layer(layer).output
    except ValueError as exc:
        raise BackboneError(f"InceptionV3 has no layer named {layer!r}") from exc
    model = keras.Model(base.input, out, name=f"inception_v3_{layer}")
    if weights.path is None:
        return model
    tried = []
    for scope in (["truncated", "full"] if weights.scope == "unknown" else [weights.scope]):
        try:
            (model if scope == "truncated" else base).load_weights(str(weights.path))
            return model
        except Exception as exc:
            tried.append(f"{scope}: {type(exc).__name__}: {str(exc)[:200]}")
    raise BackboneError(f"{weights.path}: weights do not fit InceptionV3 ({'; '.join(tried)})")


_HUB_HANDLE = re.compile(r"^https://[^\s]+/\d+/?$|^https://[^\s]+/versions/\d+/?$")


def validate_hub_handle(handle: str) -> str:
    """Accept only a versioned https handle or an existing local SavedModel directory.

    Raises:
        BackboneError: anything else (unversioned URL, http, missing folder, no saved_model.pb).
    """
    if handle.startswith(("http://", "https://", "gs://")):
        if not _HUB_HANDLE.match(handle):
            raise BackboneError(
                f"hub handle {handle!r} must be a versioned https URL (ending in /<version>)"
            )
        return handle
    path = Path(handle).expanduser()
    if not path.is_dir():
        raise BackboneError(f"{path}: hub backbone directory not found")
    if not (path / "saved_model.pb").is_file():
        raise BackboneError(f"{path}: not a SavedModel directory (no saved_model.pb)")
    return str(path.resolve())


#: Seed of the synthetic probe pages (numpy PCG64, stable across platforms and numpy versions).
PROBE_SEED = 20261201


def probe_pages(input_size: tuple[int, int] = (299, 299), channels: int = 1, n: int = 8) -> np.ndarray:
    """A fixed set of synthetic, document-like pages for comparing engines and precisions.

    Each page is white paper with dark text-like lines of random lengths in one or two columns,
    and, depending on the page, a ruled table, a dark block (a photo or logo) or a grey
    background (a greyscale scan); drawn with numpy only (no fonts, no resampling), from
    :data:`PROBE_SEED`, so the pixels are identical on every machine.

    Args:
        input_size: (height, width) in pixels, the network input size.
        channels: 1 (grey) or 3 (the grey page repeated, with a tinted block on odd pages).
        n: number of pages.

    Returns:
        uint8 array (n, H, W, channels).
    """
    h, w = input_size
    rng = np.random.default_rng(PROBE_SEED)
    out = np.empty((n, h, w, channels), np.uint8)
    for i in range(n):
        paper = 255 if i % 4 != 3 else 205
        page = np.full((h, w, channels), paper, np.uint8)
        margin = max(2, w // 12)
        cols = 1 + (i % 2)
        col_w = (w - 2 * margin) // cols
        line_h = max(2, h // int(rng.integers(28, 60)))
        for c in range(cols):
            x0 = margin + c * col_w
            for y in range(margin, h - margin - line_h, line_h * 2):
                x = x0
                end = x0 + int(col_w * rng.uniform(0.5, 0.95))
                while x < end:  # words
                    ww = int(rng.integers(3, max(4, col_w // 6)))
                    page[y : y + line_h, x : min(x + ww, end)] = int(rng.integers(0, 70))
                    x += ww + max(2, line_h // 2)
        if i % 3 == 1:  # a ruled table
            ty0, ty1, tx0, tx1 = h // 2, h - margin, margin, w - margin
            page[ty0:ty1, tx0:tx1] = paper
            for y in range(ty0, ty1, max(4, h // 20)):
                page[y, tx0:tx1] = 0
            for x in range(tx0, tx1, max(4, w // 6)):
                page[ty0:ty1, x] = 0
        if i % 3 == 2:  # a dark block
            bh, bw = h // int(rng.integers(4, 7)), w // int(rng.integers(3, 5))
            by, bx = int(rng.integers(margin, h - bh - margin)), int(rng.integers(margin, w - bw - margin))
            page[by : by + bh, bx : bx + bw] = int(rng.integers(20, 120))
            if channels == 3 and i % 2:
                page[by : by + bh, bx : bx + bw, 2] = 200
        out[i] = page
    return out


def _notice(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class _Forward:
    fn: Callable[[np.ndarray], np.ndarray]
    dim: int
    description: dict


class FeatureExtractor:
    """Pages in, L2-normalised feature vectors out, on the engine ``settings.engine`` picks.

    Args:
        settings: backbone, layer, weights, input size, pooling, batch size.
        channels: 1 for grey pages, 3 for RGB pages (``RenderSettings.color``).
        announce: print the weights choice on stderr when it is not the official ImageNet one.

    Attributes:
        dim: length D of each vector (288 for ``mixed1`` with ``gap``).
        description: what the manifest records (backbone, layer, output shape, pooling, weights
            source and sha256, preprocessing, input size, dtype policy, Keras backend, and
            ``engine``: name, version, precision, device, CPU flags).
        engine_fallback: why ``auto`` fell back from OpenVINO to TensorFlow (None when it did not).
        cache_hit, cache_entry: (OpenVINO) whether the converted model came from the IR cache,
            and its folder.

    Raises:
        WeightsError: weights unavailable or failing their sha256 check.
        BackboneError: bad backbone, layer, pooling or hub handle; ``engine = "openvino"`` chosen
            explicitly and OpenVINO missing or failing to convert / compile (``auto`` falls back
            to TensorFlow with a one-line notice on stderr instead).
    """

    def __init__(self, settings: FeatureSettings, channels: int = 1, *, announce: bool = True):
        if channels not in (1, 3):
            raise ValueError("channels must be 1 or 3")
        self.settings = settings
        self.channels = channels
        self.batch_size = settings.batch_size
        self.input_size = tuple(settings.input_size)
        if settings.backbone == "inception_v3":
            fwd = self._build_inception(settings, announce)
        elif settings.backbone.startswith("hub:"):
            fwd = self._build_hub(settings)
        else:
            raise BackboneError(
                f"unknown backbone {settings.backbone!r}; use 'inception_v3' or 'hub:HANDLE'"
            )
        self._fn = fwd.fn
        self.dim = fwd.dim
        self.description = fwd.description
        self._probe: np.ndarray | None = None

    # -- builders -------------------------------------------------------------------------
    def _wanted_engine(self, s: FeatureSettings, gpu: bool) -> str:
        """``openvino`` or ``tensorflow`` for an InceptionV3 backbone, before trying to build it."""
        if s.engine == "tensorflow":
            return "tensorflow"
        if keras.backend.backend() != "tensorflow":
            if s.engine == "openvino":
                raise BackboneError(
                    f"engine 'openvino' converts the model through TensorFlow; the Keras backend is {keras.backend.backend()!r}"
                )
            return "tensorflow"
        if s.engine == "auto" and gpu:
            return "tensorflow"  # the GPU path
        return "openvino"

    def _build_inception(self, s: FeatureSettings, announce: bool) -> _Forward:
        weights = resolve_weights(s.weights, s.weights_sha256, announce=announce)
        gpu = _gpu_visible()
        engine = self._wanted_engine(s, gpu)
        self.weights = weights
        self.engine_fallback: str | None = None
        if engine == "openvino":
            from docsort.core import openvino_engine as ove

            try:
                return self._build_openvino(s, weights, ove)
            except ove.EngineUnavailable as exc:
                if s.engine == "openvino":
                    raise BackboneError(f"engine 'openvino': {exc}") from exc
                self.engine_fallback = str(exc)
                _notice(f"notice: {exc}; features run on TensorFlow instead (engine = 'auto')")
        bf16 = s.precision == "bfloat16" or (s.precision == "auto" and gpu)
        policy = "mixed_bfloat16" if bf16 else "float32"
        model, forward, description = self._keras_forward(s, weights, policy)
        description["engine"] = {
            "name": "tensorflow" if keras.backend.backend() == "tensorflow" else f"keras-{keras.backend.backend()}",
            "version": _backend_version(),
            "precision": "bfloat16" if bf16 else "float32",
            "device": "GPU" if gpu else "CPU",
            "cpu_flags": _cpu_flags(),
        }
        return _Forward(self._compile(forward), description["dim"], description)

    def _keras_forward(self, s: FeatureSettings, weights: ResolvedWeights, policy: str):
        """Build the Keras model under ``policy``; returns ``(model, forward, description)``.

        ``forward`` maps uint8 (n, H, W, C) to L2-normalised float32 (n, D) in backend ops.
        """
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(policy)
        try:
            model = build_inception_backbone(weights, s.layer, self.input_size, s.seed)
        finally:
            keras.config.set_dtype_policy(previous)
        out_shape = tuple(int(d) for d in model.output.shape[1:])
        pool, _ = POOLINGS.get(s.pooling, (None, 0))
        dim = pooled_dim(s.pooling, out_shape[-1])
        scheme = weights.preprocessing

        def forward(x):
            fmap = model(preprocess(x, scheme), training=False)
            v = pool(ops.cast(fmap, "float32"))
            return v / ops.maximum(ops.norm(v, axis=-1, keepdims=True), 1e-12)

        description = {
            "backbone": "keras.applications.InceptionV3",
            "layer": s.layer,
            "layer_output_shape": list(out_shape),
            "pooling": s.pooling,
            "dim": dim,
            "input_size": list(self.input_size),
            "channels_in": self.channels,
            "preprocessing": scheme,
            "weights": {
                "spec": s.weights,
                "source": weights.source,
                "sha256": weights.sha256,
                "file": weights.path.name if weights.path else None,
                "note": weights.note,
            },
            "seed": s.seed,
            "dtype_policy": policy,
            "keras_backend": keras.backend.backend(),
        }
        self.model = model
        self._keras_fn = forward
        return model, forward, description

    def _build_openvino(self, s: FeatureSettings, weights: ResolvedWeights, ove) -> _Forward:
        """Convert the float32 Keras forward function with OpenVINO (cached) and compile it for the CPU.

        Raises:
            EngineUnavailable: OpenVINO missing, or conversion / compilation failing.
        """
        ov = ove.import_openvino()
        model, forward, description = self._keras_forward(s, weights, "float32")
        import tensorflow as tf

        shape = (self.batch_size, *self.input_size, self.channels)
        parts = {
            "weights_sha256": weights.sha256,
            "weights_seed": s.seed if weights.sha256 is None else None,
            "layer": s.layer,
            "input_size": list(self.input_size),
            "channels": self.channels,
            "pooling": s.pooling,
            "preprocessing": weights.preprocessing,
            "batch": self.batch_size,
            "openvino": str(ov.get_version()),
            "keras": keras.__version__,
            "docsort": _docsort_version(),
        }

        def convert():
            fn = tf.function(forward, input_signature=[tf.TensorSpec(shape, tf.uint8)])
            return ov.convert_model(fn)

        ir, hit, entry = ove.load_or_convert(parts, convert, log=_notice)
        core = ov.Core()
        bf16 = s.precision == "bfloat16" or (s.precision == "auto" and ove.supports_bf16(core))
        compiled, props = ove.compile_for_cpu(ir, "bfloat16" if bf16 else "float32", s.threads)
        request = compiled.create_infer_request()
        output = compiled.outputs[0]

        def run(x: np.ndarray) -> np.ndarray:
            return np.array(request.infer({0: x})[output], dtype=np.float32, copy=True)

        try:  # a compiled model that cannot run counts as a failed compile
            probe = run(np.zeros(shape, np.uint8))
        except Exception as exc:
            raise ove.EngineUnavailable(f"OpenVINO cannot run the compiled model ({type(exc).__name__}: {exc})") from exc
        if probe.shape != (self.batch_size, description["dim"]):
            raise ove.EngineUnavailable(f"OpenVINO returned shape {probe.shape}, expected {(self.batch_size, description['dim'])}")
        self.cache_hit, self.cache_entry = hit, entry
        description["engine"] = {
            "name": "openvino",
            "version": str(ov.get_version()),
            "precision": "bfloat16" if bf16 else "float32",
            "inference_precision": props["inference_precision"],
            "threads": props["threads"],
            "streams": props["streams"],
            "device": "CPU",
            "cpu_flags": ove.cpu_flags(),
        }
        self.engine_properties = props
        return _Forward(run, description["dim"], description)

    def _build_hub(self, s: FeatureSettings) -> _Forward:
        if keras.backend.backend() != "tensorflow":
            raise BackboneError("hub: backbones need the TensorFlow backend")
        if s.engine == "openvino":
            raise BackboneError("engine 'openvino' runs the InceptionV3 backbone only; use engine 'tensorflow' or 'auto' for hub: backbones")
        self.engine_fallback = None
        import tensorflow as tf

        with quiet_native_stderr():
            import tensorflow_hub as hub

        handle = validate_hub_handle(s.backbone[len("hub:"):])
        try:
            module = hub.load(handle)
        except Exception as exc:
            raise BackboneError(f"cannot load hub backbone {handle}: {type(exc).__name__}: {exc}") from exc
        if callable(module):
            call = module
        elif "serving_default" in getattr(module, "signatures", {}):
            sig = module.signatures["serving_default"]

            def call(x):
                out = sig(x)
                return out[sorted(out)[0]]
        else:
            raise BackboneError(f"{handle}: SavedModel is neither callable nor has a serving_default signature")
        sha = None
        if Path(handle).is_dir():
            sha = _dir_sha256(Path(handle))

        def forward(x):
            y = call(preprocess(x, "unit"))
            y = tf.cast(y, tf.float32)
            if len(y.shape) == 4:
                y = POOLINGS[s.pooling][0](y)
            return y / tf.maximum(tf.norm(y, axis=-1, keepdims=True), 1e-12)

        probe = np.zeros((1, *self.input_size, self.channels), np.uint8)
        dim = int(forward(tf.constant(probe)).shape[-1])
        description = {
            "backbone": f"hub:{handle}",
            "layer": "model output",
            "pooling": s.pooling,
            "dim": dim,
            "input_size": list(self.input_size),
            "channels_in": self.channels,
            "preprocessing": "unit",
            "weights": {"spec": "hub", "source": "hub", "sha256": sha, "file": None, "note": f"TF Hub {handle}"},
            "seed": s.seed,
            "dtype_policy": "float32",
            "keras_backend": "tensorflow",
            "engine": {"name": "tensorflow", "version": _backend_version(), "precision": "float32", "device": "CPU",
                       "cpu_flags": _cpu_flags()},
        }
        return _Forward(self._compile(forward, force_tf=True), dim, description)

    def _compile(self, forward: Callable, force_tf: bool = False) -> Callable[[np.ndarray], np.ndarray]:
        backend = "tensorflow" if force_tf else keras.backend.backend()
        shape = (self.batch_size, *self.input_size, self.channels)
        if backend == "tensorflow":
            import tensorflow as tf

            fn = tf.function(forward, input_signature=[tf.TensorSpec(shape, tf.uint8)])
            return lambda x: fn(tf.constant(x)).numpy()
        if backend == "jax":
            import jax

            fn = jax.jit(forward)
            return lambda x: np.asarray(fn(x))
        if backend == "torch":
            import torch

            def run(x):
                with torch.no_grad():
                    return keras.ops.convert_to_numpy(forward(torch.from_numpy(x).to(keras.ops.zeros(()).device)))

            return run
        raise BackboneError(f"unsupported Keras backend {backend!r}")  # pragma: no cover

    # -- use ------------------------------------------------------------------------------
    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Embed pages already resized to the input size.

        Args:
            batch: ``uint8`` array (n, H, W, C) with (H, W) = ``input_size`` and C = ``channels``;
                any n >= 0 (split and padded to ``batch_size`` internally, so a page's vector
                does not depend on which pages share its batch).

        Returns:
            float32 array (n, dim), each row with unit L2 norm.
        """
        batch = np.asarray(batch)
        expected = (*self.input_size, self.channels)
        if batch.dtype != np.uint8 or batch.ndim != 4 or tuple(batch.shape[1:]) != expected:
            raise ValueError(f"expected uint8 (n, {', '.join(map(str, expected))}), got {batch.dtype} {batch.shape}")
        out = np.empty((len(batch), self.dim), np.float32)
        b = self.batch_size
        for start in range(0, len(batch), b):
            chunk = batch[start : start + b]
            n = len(chunk)
            if n < b:
                chunk = np.concatenate([chunk, np.zeros((b - n, *expected), np.uint8)])
            out[start : start + n] = self._fn(np.ascontiguousarray(chunk))[:n]
        return out

    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        """Embed Pillow page images (any size; resized here). Returns float32 (n, dim)."""
        from docsort.core.pages import to_network_input

        if not images:
            return np.empty((0, self.dim), np.float32)
        mode = "L" if self.channels == 1 else "RGB"
        arr = np.stack([to_network_input(im.convert(mode), self.input_size) for im in images])
        return self.embed(arr)

    def probe_vectors(self) -> np.ndarray:
        """This extractor's vectors of :func:`probe_pages` (computed once): float32 (8, dim)."""
        if self._probe is None:
            self._probe = self.embed(probe_pages(self.input_size, self.channels))
        return self._probe

    def reference_probe_vectors(self) -> np.ndarray:
        """The probe's vectors from the Keras model itself, run eagerly in its own dtype policy
        (TensorFlow float32 unless built as ``mixed_bfloat16``): the reference that collections
        made before engines were recorded were built with. float32 (8, dim).

        Raises:
            BackboneError: not an InceptionV3 backbone.
        """
        if not hasattr(self, "_keras_fn"):
            raise BackboneError("reference probe vectors need the InceptionV3 backbone")
        if getattr(self, "_reference_probe", None) is None:
            x = ops.convert_to_tensor(probe_pages(self.input_size, self.channels))
            self._reference_probe = keras.ops.convert_to_numpy(self._keras_fn(x)).astype(np.float32)
        return self._reference_probe

    def feature_map(self, batch: np.ndarray) -> np.ndarray:
        """The raw backbone output before pooling (InceptionV3 only), for inspection and tests.

        Args:
            batch: ``uint8`` (n, H, W, C) as for :meth:`embed`.

        Returns:
            float32 (n, h, w, c); (n, 35, 35, 288) for ``mixed1`` at 299x299.
        """
        if not hasattr(self, "model"):
            raise BackboneError("feature_map is only available for the InceptionV3 backbone")
        x = preprocess(ops.convert_to_tensor(batch), self.weights.preprocessing)
        return keras.ops.convert_to_numpy(self.model(x, training=False)).astype(np.float32)


def _backend_version() -> str:
    """Version of the library behind the Keras backend (TensorFlow, JAX or PyTorch)."""
    from importlib import metadata

    dist = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(keras.backend.backend(), "keras")
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def _cpu_flags() -> list[str]:
    from docsort.core.openvino_engine import cpu_flags

    return cpu_flags()


def _docsort_version() -> str:
    from docsort import __version__

    return __version__


def _dir_sha256(path: Path) -> str:
    """sha256 over a directory's files (relative name + bytes, sorted), for SavedModel backbones."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


__all__ += ["WeightsError"]
