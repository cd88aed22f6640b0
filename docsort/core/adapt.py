"""The *adapt* stage: fine-tune the truncated backbone on a collection's own pages, without labels.

Self-supervised two-view training (SimCLR: Chen, Kornblith, Norouzi & Hinton 2020, "A Simple
Framework for Contrastive Learning of Visual Representations", arXiv:2002.05709): every page is
rendered twice with random scan-style augmentations (:func:`augment_view`); the backbone, pooled as
docsort pools it (``topk``), feeds a small projection head (Dense 128 -> ReLU -> Dense 64, the
paper's non-linear head, section 4.2) and the NT-Xent loss (the paper's eq. 1, temperature
``tau``) pulls the two views of one page together and pushes the other ``2N - 2`` views of the
batch away. After training the head is thrown away (the paper's section 4.2: the representation
*before* the head transfers better) and the adapted backbone embeds the pages.

Batch-norm layers stay in inference mode (their moving statistics are not updated; Keras'
transfer-learning guide, "fine-tuning": batches of 16-32 pages give noisy statistics); their
``beta`` offsets and every convolution kernel of the trained blocks are trained.

Pure: Pillow images and a Keras model in, a trained model and a report out; nothing is written.
On TensorFlow, training runs with ``tf.config.experimental.enable_op_determinism()`` so one seed on
one machine gives the same weights (TensorFlow's determinism guide); this is a process-wide
switch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from docsort.core.styles import DEFAULT_STYLES, restyle

__all__ = ["LAYER_CHOICES", "TRAINING_PRECISIONS", "DEFAULT_TRAINING_PRECISION", "AUGMENTATIONS", "OBJECTIVE", "AdaptError", "augment_view",
           "set_trainable", "training_twin", "TrainReport", "run_epochs", "train_contrastive"]

#: ``--layers`` choices: which blocks of the ``mixed1``-truncated InceptionV3 are trained.
LAYER_CHOICES = ("mixed1", "mixed0,mixed1", "all")

#: ``--precision`` choices for training (:func:`training_twin`).
TRAINING_PRECISIONS = ("float32", "bfloat16")

#: ``docsort adapt``'s training precision unless told otherwise (benchmarks/RESULTS.md, "Adapting the network").
DEFAULT_TRAINING_PRECISION = "float32"

#: What :func:`augment_view` does, as recorded in the manifest.
AUGMENTATIONS = {
    "styles": list(DEFAULT_STYLES),
    "rotation_deg": [-2.0, 2.0],
    "scale": [0.92, 1.08],
    "crop": "zoom in: crop of the scaled page (at most ~8 % of each side lost); zoom out: page on a white margin",
}

#: The training objective, as recorded in the manifest.
OBJECTIVE = {"name": "NT-Xent (SimCLR)", "reference": "Chen et al. 2020, arXiv:2002.05709, eq. 1",
             "head": "topk pooling -> Dense 128 -> ReLU -> Dense 64", "batch_norm": "frozen (inference mode)"}


class AdaptError(ValueError):
    """Training cannot run: too few pages, bad layers choice or budget."""


def augment_view(image: Image.Image, size: tuple[int, int], rng: np.random.Generator, channels: int = 1) -> np.ndarray:
    """One random view of a page for two-view training.

    A scan style from :data:`docsort.core.styles.DEFAULT_STYLES` (:func:`docsort.core.styles.restyle`),
    then a rotation of -2..2 degrees (white corners), then a scale of 0.92..1.08 realised as a
    crop (zoom in) or a white margin (zoom out) at a random offset, so the page's layout stays in
    view; finally resized to the network input as ingest does (:func:`docsort.core.pages.to_network_input`).

    Args:
        image: Pillow image, mode ``"L"`` or ``"RGB"``, at render resolution (pixels).
        size: network input (height, width), pixels.
        rng: the source of every random choice.
        channels: 1 (grey) or 3 (RGB) in the output.

    Returns:
        uint8 array (height, width, channels).

    Raises:
        ValueError: an image mode other than ``"L"`` / ``"RGB"``.
    """
    from docsort.core.pages import to_network_input

    mode = "L" if channels == 1 else "RGB"
    im = restyle(image, DEFAULT_STYLES[int(rng.integers(len(DEFAULT_STYLES)))], rng).convert(mode)
    fill = 255 if mode == "L" else (255, 255, 255)
    im = im.rotate(float(rng.uniform(-2.0, 2.0)), resample=Image.Resampling.BILINEAR, fillcolor=fill)
    w, h = im.size
    s = float(rng.uniform(0.92, 1.08))
    cw, ch = max(1, int(round(w / s))), max(1, int(round(h / s)))
    if cw <= w and ch <= h:
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        im = im.crop((x0, y0, x0 + cw, y0 + ch))
    else:
        canvas = Image.new(mode, (max(cw, w), max(ch, h)), fill)
        canvas.paste(im, (int(rng.integers(0, canvas.width - w + 1)), int(rng.integers(0, canvas.height - h + 1))))
        im = canvas
    return to_network_input(im, size)


def set_trainable(model, layers: str) -> int:
    """Mark the layers of a ``mixed1``-truncated InceptionV3 trainable or frozen.

    Args:
        model: from :func:`docsort.core.features.build_inception_backbone`.
        layers: ``mixed1`` (the Mixed_5c block only), ``mixed0,mixed1`` (Mixed_5b and 5c: every
            layer after the stem's last max pooling) or ``all``.

    Returns:
        The number of trainable parameters.

    Raises:
        AdaptError: an unknown choice, or a model without those layers.
    """
    names = [layer.name for layer in model.layers]

    def after_stem() -> int:
        # The stem's last max pooling, found by type: Keras numbers auto-named layers per process
        # ("max_pooling2d_1" only in the first model built), so the name cannot be relied on.
        end = names.index("mixed0")
        pools = [i for i, layer in enumerate(model.layers[:end]) if type(layer).__name__ == "MaxPooling2D"]
        if not pools:
            raise ValueError("no max pooling before 'mixed0'")
        return pools[-1] + 1

    try:
        start = {"mixed1": lambda: names.index("mixed0") + 1,
                 "mixed0,mixed1": after_stem,
                 "all": lambda: 0}[layers]()
    except KeyError:
        raise AdaptError(f"unknown --layers {layers!r}; use one of {', '.join(LAYER_CHOICES)}") from None
    except ValueError as exc:
        raise AdaptError(f"the backbone has no layer for --layers {layers}: {exc}") from exc
    for i, layer in enumerate(model.layers):
        layer.trainable = i >= start
    return int(sum(int(np.prod(v.shape)) for v in model.trainable_variables))


@dataclass
class TrainReport:
    """What :func:`train_contrastive` did.

    Attributes:
        epochs_run: epochs completed (the last may be cut short by the time budget).
        steps: optimiser steps.
        losses: mean training loss per epoch (NT-Xent for :func:`train_contrastive`, cross-entropy in
            nats for :func:`docsort.core.finetune.train_classifier`).
        seconds: wall time of training, seconds.
        stopped_by_budget: the ``minutes`` budget ended training before ``epochs``.
        trainable_params: parameters trained (head excluded).
    """

    epochs_run: int = 0
    steps: int = 0
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    stopped_by_budget: bool = False
    trainable_params: int = 0


def run_epochs(
    n: int,
    batch_loss: Callable[[np.ndarray], float | None],
    report: TrainReport,
    *,
    rng: np.random.Generator,
    epochs: int,
    batch_size: int,
    minutes: float | None = None,
    on_step: Callable[[int], None] | None = None,
) -> TrainReport:
    """The epoch loop shared by :func:`train_contrastive` and :func:`docsort.core.finetune.train_classifier`.

    Each epoch visits the ``n`` pages in a fresh ``rng.permutation`` order, ``batch_size`` at a
    time; ``batch_loss(idx)`` (int indices into the pages) makes the batch's views from the same
    ``rng``, takes one optimiser step and returns its loss, or ``None`` to skip the batch (no step
    counted). Training stops after ``epochs``, or inside an epoch once ``minutes`` of wall time
    have passed.

    Args:
        n: pages. batch_loss: as above. report: filled in place (``steps``, ``losses``: the mean
            batch loss per epoch, NaN for an epoch with no step, ``epochs_run``,
            ``stopped_by_budget``, ``seconds``: wall time).
        rng: the seeded generator that also drives the augmentations.
        epochs: passes over the pages (>= 1). batch_size: pages per step.
        minutes: wall-time budget, minutes; ``None`` = none. on_step: called with the batch's
            page count after each step.

    Returns:
        ``report``.
    """
    t0 = time.perf_counter()
    deadline = None if minutes is None else t0 + 60.0 * minutes
    for _ in range(epochs):
        order = rng.permutation(n)
        ep = []
        for s in range(0, n, batch_size):
            idx = order[s:s + batch_size]
            loss = batch_loss(idx)
            if loss is None:
                continue
            ep.append(loss)
            report.steps += 1
            if on_step is not None:
                on_step(len(idx))
            if deadline is not None and time.perf_counter() > deadline:
                report.stopped_by_budget = True
                break
        report.losses.append(float(np.mean(ep)) if ep else float("nan"))
        report.epochs_run += 1
        if report.stopped_by_budget:
            break
    report.seconds = time.perf_counter() - t0
    return report


def training_twin(model, precision: str = "float32"):
    """The network that training runs on: ``model`` itself for ``float32``; for ``bfloat16`` a copy
    under Keras' ``mixed_bfloat16`` policy with the same weights (``keras.models.clone_model``,
    every layer rebuilt from its config with that policy).

    Mixed precision (Micikevicius et al. 2018, "Mixed precision training"; Keras' mixed-precision
    guide): the layers compute in bfloat16, which CPUs with AMX or AVX-512 BF16 run on their matrix
    units (oneDNN), while the variables, and so the optimiser's updates, stay float32. bfloat16 has
    float32's exponent range, so no loss scaling is needed. After training copy the weights back
    with ``model.set_weights(twin.get_weights())``: they are float32 either way.

    Args:
        model: a Keras functional model with float32 variables.
        precision: one of :data:`TRAINING_PRECISIONS`.

    Returns:
        A Keras model with ``model``'s architecture and weights; its outputs are bfloat16 tensors for
        ``bfloat16`` (cast them before a loss).

    Raises:
        AdaptError: an unknown precision.
    """
    if precision not in TRAINING_PRECISIONS:
        raise AdaptError(f"unknown training precision {precision!r}; use one of {', '.join(TRAINING_PRECISIONS)}")
    if precision == "float32":
        return model
    import keras

    def rebuild(layer):
        config = layer.get_config()
        config["dtype"] = "mixed_bfloat16"
        return layer.__class__.from_config(config)

    twin = keras.models.clone_model(model, clone_function=rebuild)
    twin.set_weights(model.get_weights())
    return twin


def train_contrastive(
    model,
    images: Sequence[Image.Image],
    *,
    preprocessing: str,
    layers: str = "mixed1",
    epochs: int = 5,
    minutes: float | None = None,
    batch_size: int = 16,
    learning_rate: float = 3e-4,
    temperature: float = 0.1,
    seed: int = 0,
    channels: int = 1,
    precision: str = DEFAULT_TRAINING_PRECISION,
    on_step: Callable[[int], None] | None = None,
) -> TrainReport:
    """Fine-tune ``model`` in place by NT-Xent on two augmented views of every page.

    Args:
        model: a ``mixed1``-truncated InceptionV3 (:func:`docsort.core.features.build_inception_backbone`)
            whose input size is the network input; float32 policy.
        images: the pages, Pillow ``"L"``/``"RGB"`` at render resolution; at least 2.
        preprocessing: ``unit`` or ``inception`` (:func:`docsort.core.features.preprocess`), the
            weights' scheme.
        layers: see :func:`set_trainable`.
        epochs: passes over the pages (each page once per epoch, in a seeded random order).
        minutes: wall-clock budget, minutes; training stops after the step that crosses it.
        batch_size: pages per step (2 views each, so 2 x batch_size images).
        learning_rate: Adam's step size (Kingma & Ba 2015).
        temperature: NT-Xent's tau (SimCLR's 0.1-0.5; 0.1 here).
        seed: seeds Keras (head initialisation) and the augmentations.
        channels: 1 or 3, the network input's channels.
        precision: ``float32``, or ``bfloat16``: the backbone computes in mixed bfloat16
            (:func:`training_twin`; pooling, head and loss stay float32) and the trained float32
            weights are copied into ``model`` at the end.
        on_step: called with the number of pages of each finished step (progress bars).

    Returns:
        A :class:`TrainReport`.

    Raises:
        AdaptError: fewer than 2 pages, epochs < 1, a bad ``layers`` or ``precision``.
    """
    import keras
    import tensorflow as tf

    from docsort.core.features import _topk, preprocess

    if len(images) < 2:
        raise AdaptError(f"need at least 2 pages to train on, got {len(images)}")
    if epochs < 1:
        raise AdaptError("epochs must be at least 1")
    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(seed)
    head = keras.Sequential([keras.layers.Dense(128, activation="relu"), keras.layers.Dense(64)], name="projection_head")
    head.build((None, int(model.output.shape[-1])))
    net = training_twin(model, precision)  # after the head: cloning draws from the seeded initialisers too
    report = TrainReport(trainable_params=set_trainable(net, layers))
    size = tuple(int(d) for d in model.input.shape[1:3])
    variables = net.trainable_variables + head.trainable_variables
    opt = keras.optimizers.Adam(learning_rate)
    opt.build(variables)
    tau = float(temperature)

    @tf.function(input_signature=[tf.TensorSpec((None, *size, channels), tf.uint8)] * 2)
    def step(a, b):
        x = tf.concat([a, b], 0)
        m = tf.shape(a)[0]
        with tf.GradientTape() as tape:
            fmap = tf.cast(net(preprocess(x, preprocessing), training=False), tf.float32)
            z = tf.math.l2_normalize(head(_topk(fmap)), axis=-1)
            sim = tf.matmul(z, z, transpose_b=True) / tau - 1e9 * tf.eye(2 * m)
            target = tf.concat([tf.range(m, 2 * m), tf.range(0, m)], 0)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(target, sim))
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    rng = np.random.default_rng(seed)

    def batch_loss(idx: np.ndarray) -> float | None:
        if len(idx) < 2:  # one page has no negatives
            return None
        va = np.stack([augment_view(images[i], size, rng, channels) for i in idx])
        vb = np.stack([augment_view(images[i], size, rng, channels) for i in idx])
        return float(step(tf.constant(va), tf.constant(vb)))

    run_epochs(len(images), batch_loss, report, rng=rng, epochs=epochs, batch_size=batch_size, minutes=minutes,
               on_step=on_step)
    if net is not model:
        model.set_weights(net.get_weights())
    for layer in (*model.layers, *net.layers):
        layer.trainable = False
    return report
