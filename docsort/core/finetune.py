"""The *fine-tune from labels* stage: retrain the last blocks of the truncated backbone and a softmax
head on labelled pages (issue 14, item 3; ``docsort classify --fine-tune``).

The second half of TensorFlow Hub's transfer learning (``hub.Module(..., trainable=True)``, the
"image retraining" tutorial): instead of fitting a classifier on frozen features, the trained
blocks of the ``mixed1``-truncated InceptionV3 (:func:`docsort.core.adapt.set_trainable`) and a dense
softmax layer on the pooled, L2-normalised map are trained together by cross-entropy on the
labelled pages. Every step sees one random scan-style view of each page
(:func:`docsort.core.adapt.augment_view`: the same augmentations as ``docsort adapt``), so the head
cannot learn a type from its pages' scan style. Batch-norm layers stay in inference mode, as in
:mod:`docsort.core.adapt` (Keras' transfer-learning guide, "fine-tuning").

:func:`cross_validate` scores the recipe on given folds (the caller chooses them, so the frozen
classifier can be scored on the very same folds); :func:`train_classifier` trains it on all
labelled pages; :func:`predict` types pages with the trained model.

Pure: Pillow images, labels and a Keras model in, trained weights, probabilities and reports out;
nothing is written. Deterministic for a seed on one machine (``enable_op_determinism``, as in
:mod:`docsort.core.adapt`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from docsort.core.adapt import AdaptError, TrainReport, augment_view, run_epochs, set_trainable

__all__ = ["FineTuneError", "FitReport", "FineTuned", "train_classifier", "load_classifier", "predict", "cross_validate"]

#: What the softmax head is, as recorded in the manifest.
HEAD = ("pooling (the collection's) -> L2 normalisation -> standardisation (training pages' mean and variance, "
        "fixed) -> Dense(types, softmax)")


class FineTuneError(AdaptError):
    """Fine-tuning cannot run: fewer than two types, too few pages, a bad budget or layers choice."""


#: What one :func:`train_classifier` run did: the fields of :class:`docsort.core.adapt.TrainReport`
#: (``losses``: mean cross-entropy per epoch, nats; ``trainable_params``: backbone parameters, head excluded).
FitReport = TrainReport


@dataclass
class FineTuned:
    """A fine-tuned classifier: the backbone (trained in place) and its head.

    Attributes:
        model: Keras model uint8 (n, H, W, C) -> float32 (n, types) probabilities; it shares its
            backbone layers with the backbone passed to :func:`train_classifier`.
        classes: the types, in the order of the probability columns.
        report: the :class:`FitReport` (an empty one for a model read by :func:`load_classifier`).
        mean, variance: float32 (D,), the head's fixed standardisation (the training pages' clean
            vectors). Keras' ``Normalization`` layer keeps them as constants, not weights, so a
            ``.weights.h5`` file does not hold them: they are stored beside it.
    """

    model: object
    classes: list[str]
    report: FitReport
    mean: np.ndarray | None = None
    variance: np.ndarray | None = None


def _features_model(backbone, preprocessing: str, pooling: str, channels: int):
    """uint8 (n, H, W, C) -> float32 (n, D): pooled, L2-normalised, as docsort embeds pages."""
    import keras

    from docsort.core.features import POOLINGS, preprocess

    pool = POOLINGS[pooling][0]
    size = tuple(int(d) for d in backbone.input.shape[1:3])
    inp = keras.Input((*size, channels), dtype="uint8")
    fmap = backbone(preprocess(inp, preprocessing), training=False)
    v = pool(keras.ops.cast(fmap, "float32"))
    v = v / keras.ops.maximum(keras.ops.norm(v, axis=-1, keepdims=True), 1e-12)
    return keras.Model(inp, v, name="pooled_features")


def _full_model(features, mean: np.ndarray, variance: np.ndarray, n_classes: int, seed: int):
    """features -> fixed standardisation (the frozen classifier's StandardScaler) -> Dense softmax."""
    import keras

    inp = keras.Input(features.input.shape[1:], dtype="uint8")
    z = keras.layers.Normalization(mean=mean, variance=variance, name="standardise")(features(inp))
    head = keras.layers.Dense(n_classes, activation="softmax", name="type_head",
                              kernel_initializer=keras.initializers.GlorotUniform(seed=seed))
    return keras.Model(inp, head(z), name="fine_tuned_classifier")


def train_classifier(
    backbone,
    images: Sequence[Image.Image],
    types: Sequence[str],
    *,
    preprocessing: str,
    pooling: str = "topk",
    layers: str = "mixed1",
    epochs: int = 10,
    minutes: float | None = None,
    batch_size: int = 16,
    learning_rate: float = 1e-3,
    seed: int = 0,
    channels: int = 1,
    on_step: Callable[[int], None] | None = None,
) -> FineTuned:
    """Fine-tune ``backbone`` in place plus a new softmax head on labelled pages.

    The head's input is the pooled, L2-normalised vector standardised by the mean and variance of
    the training pages' clean (unaugmented) vectors before training, fixed afterwards: the frozen
    classifier's ``StandardScaler``: an L2-normalised vector's coordinates are small, and without it a
    short budget left the head far from fitted (benchmarks/RESULTS.md, "Adapting the network"). Adam (Kingma & Ba 2015) on the mean cross-entropy, class-balanced (each page weighted by
    ``n / (types * pages of its type)``, scikit-learn's ``class_weight="balanced"`` rule, as the
    frozen classifier of :mod:`docsort.jobs.classify` weighs its pages). The head learns at
    ``learning_rate``, the backbone at a tenth of it (the usual smaller step for pretrained layers,
    Keras' transfer-learning guide).

    Args:
        backbone: a ``mixed1``-truncated InceptionV3 (:func:`docsort.core.features.build_inception_backbone`),
            float32; its trained blocks are changed in place.
        images: the labelled pages, Pillow ``"L"``/``"RGB"`` at render resolution.
        types: str (n,), their types; at least two distinct.
        preprocessing: ``unit`` or ``inception`` (:func:`docsort.core.features.preprocess`).
        pooling: a name of :data:`docsort.core.features.POOLINGS` (the collection's).
        layers: see :func:`docsort.core.adapt.set_trainable`.
        epochs: passes over the pages (seeded order, one augmented view per page and epoch).
        minutes: wall-clock budget, minutes; training stops after the step that crosses it.
        batch_size: pages per step.
        learning_rate: the head's Adam step size.
        seed: seeds the head initialisation, page order and augmentations.
        channels: 1 or 3, the network input's channels.
        on_step: called with the number of pages of each finished step (progress bars).

    Returns:
        A :class:`FineTuned`.

    Raises:
        FineTuneError: fewer than two types, images and types of different lengths, epochs < 1,
            or a bad ``layers`` (from :func:`docsort.core.adapt.set_trainable`, an ``AdaptError``).
    """
    import keras
    import tensorflow as tf

    y_names = np.asarray([str(t) for t in types], dtype=object)
    if len(y_names) != len(images):
        raise FineTuneError(f"{len(images)} pages but {len(y_names)} types")
    classes, y, counts = np.unique(y_names, return_inverse=True, return_counts=True)
    if len(classes) < 2:
        raise FineTuneError("fine-tuning needs labelled pages of at least two document types")
    if epochs < 1:
        raise FineTuneError("epochs must be at least 1")
    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(seed)
    report = FitReport(trainable_params=set_trainable(backbone, layers))
    size = tuple(int(d) for d in backbone.input.shape[1:3])
    features = _features_model(backbone, preprocessing, pooling, channels)
    # Standardised head inputs (docstring): Adam's per-weight steps move the logits in proportion
    # to the inputs' scale.
    from docsort.core.pages import to_network_input

    mode = "L" if channels == 1 else "RGB"
    clean = np.concatenate([np.asarray(features(np.stack([to_network_input(im.convert(mode), size)
                                                          for im in images[s:s + batch_size]]), training=False))
                            for s in range(0, len(images), batch_size)])
    mean, var = clean.mean(axis=0), np.maximum(clean.var(axis=0), 1e-12)
    model = _full_model(features, mean, var, len(classes), seed)
    head_vars = model.get_layer("type_head").trainable_variables
    body_vars = backbone.trainable_variables
    opt_head, opt_body = keras.optimizers.Adam(learning_rate), keras.optimizers.Adam(learning_rate / 10.0)
    opt_head.build(head_vars)
    if body_vars:
        opt_body.build(body_vars)
    weight = (len(y) / (len(classes) * counts)).astype(np.float32)  # balanced, per class

    @tf.function(input_signature=[tf.TensorSpec((None, *size, channels), tf.uint8), tf.TensorSpec((None,), tf.int32)])
    def step(x, t):
        with tf.GradientTape() as tape:
            p = model(x, training=False)
            ce = tf.keras.losses.sparse_categorical_crossentropy(t, p)
            w = tf.gather(tf.constant(weight), t)
            loss = tf.reduce_sum(w * ce) / tf.reduce_sum(w)
        grads = tape.gradient(loss, head_vars + body_vars)
        opt_head.apply_gradients(zip(grads[: len(head_vars)], head_vars))
        if body_vars:
            opt_body.apply_gradients(zip(grads[len(head_vars):], body_vars))
        return loss

    rng = np.random.default_rng(seed)

    def batch_loss(idx: np.ndarray) -> float:
        x = np.stack([augment_view(images[i], size, rng, channels) for i in idx])
        return float(step(tf.constant(x), tf.constant(y[idx].astype(np.int32))))

    run_epochs(len(images), batch_loss, report, rng=rng, epochs=epochs, batch_size=batch_size, minutes=minutes,
               on_step=on_step)
    for layer in backbone.layers:
        layer.trainable = False
    return FineTuned(model, [str(c) for c in classes], report, mean.astype(np.float32), var.astype(np.float32))


def load_classifier(
    backbone,
    weights_file,
    classes: Sequence[str],
    mean: np.ndarray,
    variance: np.ndarray,
    *,
    preprocessing: str,
    pooling: str = "topk",
    channels: int = 1,
) -> FineTuned:
    """Rebuild a fine-tuned classifier saved with ``FineTuned.model.save_weights``.

    The model is built as :func:`train_classifier` builds it (same layers, same names) and its
    weights, backbone and head, are read from ``weights_file`` (Keras ``Model.load_weights``).

    Args:
        backbone: a ``mixed1``-truncated InceptionV3 of the architecture the model was trained on
            (:func:`docsort.core.features.build_inception_backbone`), float32; its weights are
            replaced in place by the file's.
        weights_file: the ``.weights.h5`` path.
        classes: the types, in the order the model was trained with (its probability columns).
        mean, variance: float (D,), the stored standardisation (:class:`FineTuned`).
        preprocessing, pooling, channels: as the model was trained with.

    Returns:
        A :class:`FineTuned` with an empty report.

    Raises:
        FineTuneError: fewer than two classes, or ``mean``/``variance`` not of the backbone's
            pooled width.
        ValueError: (Keras) a weights file that does not fit the architecture.
    """
    if len(classes) < 2:
        raise FineTuneError("a fine-tuned classifier has at least two types")
    features = _features_model(backbone, preprocessing, pooling, channels)
    width = int(features.output.shape[-1])
    mean = np.asarray(mean, np.float32).reshape(-1)
    variance = np.asarray(variance, np.float32).reshape(-1)
    if mean.shape != (width,) or variance.shape != (width,):
        raise FineTuneError(f"the stored standardisation has {mean.size} / {variance.size} values; the pooled vector has {width}")
    model = _full_model(features, mean, variance, len(classes), seed=0)
    model.load_weights(str(weights_file))
    for layer in backbone.layers:
        layer.trainable = False
    return FineTuned(model, [str(c) for c in classes], FitReport(), mean, variance)


def predict(tuned: FineTuned, pages: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Type probabilities of pages with a fine-tuned classifier.

    Args:
        tuned: from :func:`train_classifier`.
        pages: uint8 (n, H, W, C) network inputs (:func:`docsort.core.pages.to_network_input`, no
            augmentation).
        batch_size: pages per forward pass.

    Returns:
        float32 (n, types), rows summing to 1, columns in ``tuned.classes`` order.
    """
    out = [np.asarray(tuned.model(pages[s:s + batch_size], training=False), dtype=np.float32)
           for s in range(0, len(pages), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, len(tuned.classes)), np.float32)


def cross_validate(
    backbone,
    images: Sequence[Image.Image],
    types: Sequence[str],
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    on_fold: Callable[[int], None] | None = None,
    **train_kwargs,
) -> tuple[float, np.ndarray, list[FitReport]]:
    """Held-out accuracy of :func:`train_classifier` on given folds.

    Each fold starts from ``backbone``'s weights as passed in (saved with ``get_weights`` and
    restored before every fold and at the end), trains on the fold's training pages and types its
    held-out pages, seen without augmentation.

    Args:
        backbone: as for :func:`train_classifier`; unchanged on return.
        images, types: the labelled pages and their types (n of each).
        folds: ``(train indices, test indices)`` pairs, int arrays into ``images`` (e.g. from
            ``StratifiedKFold.split``); every test page is held out exactly once.
        on_fold: called with the fold number after each fold.
        train_kwargs: passed to :func:`train_classifier` (``preprocessing`` is required).

    Returns:
        ``(accuracy, predicted types (n,) object array, one FitReport per fold)``; accuracy in
        0..1 over the held-out pages.

    Raises:
        FineTuneError: a fold whose training pages hold fewer than two types.
    """
    from docsort.core.pages import to_network_input

    y = np.asarray([str(t) for t in types], dtype=object)
    pred = np.empty(len(y), dtype=object)
    start = backbone.get_weights()
    size = tuple(int(d) for d in backbone.input.shape[1:3])
    channels = int(train_kwargs.get("channels", 1))
    mode = "L" if channels == 1 else "RGB"
    reports = []
    try:
        for k, (tr, te) in enumerate(folds):
            backbone.set_weights(start)
            tuned = train_classifier(backbone, [images[i] for i in tr], list(y[tr]), **train_kwargs)
            x = np.stack([to_network_input(images[i].convert(mode), size) for i in te])
            P = predict(tuned, x)
            pred[te] = np.asarray(tuned.classes, dtype=object)[P.argmax(axis=1)]
            reports.append(tuned.report)
            if on_fold is not None:
                on_fold(k)
    finally:
        backbone.set_weights(start)
    return float(np.mean(pred == y)), pred, reports
