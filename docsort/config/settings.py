"""Pipeline settings: the named, validated parameter sets that the CLI and the UI run.

A *pipeline* is a TOML file (see ``pipelines/default.toml`` in the repository) that only
parameterises the stages in this package: rasterization resolution, backbone and layer, weights,
pooling, batch size, index type, UMAP and HDBSCAN parameters, and the document-type classifier.
It is validated on load with pydantic, so a typo in a key or a value of the wrong type is a clear
error naming the file.

``load_pipeline("default")`` returns the built-in defaults when no ``default.toml`` is found, so
an installed docsort works outside the source checkout.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "RenderSettings",
    "FeatureSettings",
    "IndexSettings",
    "UmapSettings",
    "HdbscanSettings",
    "ClassifierSettings",
    "OcrSettings",
    "TextSettings",
    "InvarianceSettings",
    "RaySettings",
    "DuplicateSettings",
    "PipelineSettings",
    "PipelineError",
    "load_pipeline",
    "pipeline_search_path",
]


class PipelineError(ValueError):
    """A pipeline file is missing, unreadable or does not validate against the schema."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RenderSettings(_Strict):
    """How files become page images (the *pages* stage).

    Attributes:
        long_side_px: pages are rasterized so that their longer side is this many pixels
            (poppler ``pdftoppm -scale-to``; Pillow ``thumbnail`` for images). It must be at least
            the backbone's input side (299 px) so no pixel the network sees is invented; 400 px
            keeps enough for the thumbnail and costs a fraction of the seed's 200 dpi render
            (an 11-inch page at 200 dpi is 2200 px long, of which the network sees 299).
        thumbnail_px: longer side of the JPEG thumbnail stored per page for the UI, pixels.
        color: ``"gray"`` converts every page to 8-bit grayscale before the network (scans of one
            document type arrive in colour and in grey; grey makes them comparable), ``"rgb"``
            keeps colour.
        pdf_chunk_pages: PDFs are rendered this many pages at a time, so a 1,000-page PDF never
            sits in memory whole; a chunk is also the unit of work of a rasterization worker.
        workers: rasterization worker processes; 0 = one per CPU core, 1 = render in the
            ingesting process.
    """

    long_side_px: int = Field(400, ge=64, le=4096)
    thumbnail_px: int = Field(256, ge=32, le=1024)
    color: Literal["gray", "rgb"] = "gray"
    pdf_chunk_pages: int = Field(16, ge=1, le=1000)
    workers: int = Field(0, ge=0, le=256)


class FeatureSettings(_Strict):
    """The backbone, the layer read out, the weights and the pooling (the *features* stage).

    Attributes:
        backbone: ``"inception_v3"`` (Keras applications) or ``"hub:HANDLE"``, a TF2 image
            feature-vector SavedModel given as a versioned https handle or a local directory.
        layer: Keras layer name read out of InceptionV3; ``mixed1`` is TF-slim's
            ``InceptionV3/Mixed_5c`` (35x35x288 at 299x299 input).
        weights: ``auto`` | ``imagenet`` | ``bundled`` | ``random`` | a path to a ``.h5`` or
            ``.weights.h5`` file. See :mod:`docsort.core.weights`.
        weights_sha256: expected sha256 of a weights file given by path (optional; always
            recorded in the manifest).
        input_size: network input, pixels, (height, width). InceptionV3's native size is 299.
        pooling: name of the pooling of the feature map, see :data:`docsort.core.features.POOLINGS`.
            ``topk`` (each channel's top 3 % of the 35x35 cells averaged) was chosen on the labelled
            development corpus (benchmarks/RESULTS.md, "Sorting quality (issue 5)"). Collections keep
            the pooling they were built with.
        batch_size: pages per forward pass.
        seed: seed for ``random`` weights.
        engine: what runs the network. ``openvino``: the Keras model converted at load by
            ``openvino.convert_model`` (pooling and L2 normalisation inside the converted graph,
            static batch shape, the IR cached on disk, :mod:`docsort.core.openvino_engine`) and compiled
            for the CPU. ``tensorflow``: the Keras model compiled by its Keras backend
            (``tf.function`` on TensorFlow, the default backend; ``jax.jit`` with
            ``KERAS_BACKEND=jax``). ``auto``: OpenVINO on a CPU-only machine when it is installed
            and compiles, else TensorFlow with a one-line notice on stderr; TensorFlow when a GPU is
            visible, for a ``hub:`` backbone, or when the Keras backend is not TensorFlow. Speeds of
            each engine here: benchmarks/RESULTS.md, "Inference engines (issue 16)".
        threads: OpenVINO ``INFERENCE_NUM_THREADS`` (0 = OpenVINO's default, one per core). The
            rendering workers run beside it; benchmarks/RESULTS.md ("Inference engines (issue
            16)") gives the pages/s of the combinations tried. Vectors were bit-identical with 1
            and 2 threads here (bfloat16, the probe pages); oneDNN does not promise it for every
            CPU, so keep it fixed on a machine for bit-reproducible collections.
        precision: compute precision. ``auto``: on OpenVINO, bfloat16 when the CPU reports
            ``BF16`` in OpenVINO's ``OPTIMIZATION_CAPABILITIES`` (AMX or AVX-512 BF16), else
            float32; on TensorFlow, Keras ``mixed_bfloat16`` when a GPU is visible, else float32.
            OpenVINO bfloat16 vectors against TensorFlow float32 on real pages (sample_docs and
            the development corpus): cosine >= 0.99996, kNN@5 moved by <= 0.0008 (the project's
            rule for a default: <= 0.005; benchmarks/RESULTS.md). A collection takes vectors of
            another engine or precision only when they pass the probe check of
            :func:`docsort.store.manifest.check_engine_parity`.
    """

    backbone: str = "inception_v3"
    layer: str = "mixed1"
    weights: str = "auto"
    weights_sha256: str | None = None
    input_size: tuple[int, int] = (299, 299)
    pooling: str = "topk"
    batch_size: int = Field(32, ge=1, le=4096)
    seed: int = 0
    precision: Literal["auto", "float32", "bfloat16"] = "auto"
    engine: Literal["auto", "tensorflow", "openvino"] = "auto"
    threads: int = Field(0, ge=0, le=256)

    @field_validator("engine", mode="before")
    @classmethod
    def _engine_known(cls, v):
        if v in ("jax", "torch", "pytorch"):
            raise ValueError(
                f"engine {v!r} is not an engine of its own: choose engine = 'tensorflow' and run Python "
                f"with KERAS_BACKEND={'torch' if v == 'pytorch' else v} to run the Keras model on that backend"
            )
        return v

    @field_validator("input_size")
    @classmethod
    def _input_size_min(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) < 75:
            raise ValueError("InceptionV3 needs an input of at least 75x75 pixels")
        return v


class IndexSettings(_Strict):
    """FAISS index (the *index* stage).

    Attributes:
        type: ``flat`` (exact ``IndexFlatIP``), ``hnsw`` (``IndexHNSWFlat``, inner product),
            ``ivf`` (``IndexIVFFlat``, inner product), ``ivfpq`` (``IndexIVFPQ``, inner product:
            ``pq_m`` bytes a vector instead of 4 x D) or ``auto`` (flat up to ``auto_above``
            pages, ``auto_kind`` above, IVF-PQ above ``pq_above``).
        hnsw_m: HNSW graph degree M (FAISS default 32).
        hnsw_ef_search: HNSW ``efSearch``; 64 gave recall@10 0.98 on 100k x 288 here.
        ivf_nlist: IVF inverted lists; 0 = ``4 * sqrt(n)`` (the low end of the FAISS wiki's
            "Guidelines to choose an index": 4-16 x sqrt(n)). The index is rebuilt (retrained)
            when the collection has grown so that this is twice the trained number.
        ivf_nprobe: IVF lists visited per query.
        auto_above: collection size, pages, above which ``auto`` builds ``auto_kind``.
        auto_kind: the approximate index ``auto`` switches to.
        pq_above: collection size, pages, above which ``auto`` builds IVF-PQ (see below).
        pq_m: IVF-PQ sub-quantizers (bytes per vector at 8 bits); lowered to the largest divisor
            of the vector dimension (288 = 16 x 18 = 32 x 9 = 48 x 6).
        pq_nbits: bits per sub-quantizer code (FAISS wiki "Lower memory footprint": 8); lowered
            for training sets under 39 x 2**nbits vectors.
        build_chunk: vectors read from the collection at a time when an index is rebuilt
            (100,000 x 288 float32 = 115 MB), so a rebuild holds the index, its training sample
            and one chunk, not every vector twice.

    Defaults from ``benchmarks/scale_benchmark.py`` (synthetic 288-d page-like vectors, this
    2-core machine, benchmarks/RESULTS.md): exact flat search takes p50 40 ms at 100k vectors and
    348 ms at 1M; at 1M IVF (nlist 4000, nprobe 64) gives p50 1.7 ms at recall@10 0.9999 and builds
    in 76 s, while HNSW (M 32, efSearch 64) gives 6.6 ms at recall 0.965 and builds in 709 s.
    So ``auto`` stays exact up to 100k pages and uses IVF above.

    IVF-PQ above ``pq_above`` = 5M pages is a memory line, not a speed one (issue 17; same
    benchmark, ``--pq-sizes``, 1M and 500k vectors, benchmarks/RESULTS.md "Ray shards and
    IVF-PQ"): IVF-Flat holds 1,173 bytes a vector (288 float32 + id), so 5M pages are a 5.9 GB
    index and 10M 11.7 GB, held whole by every process that searches (the app, ``docsort
    search``) and by the one that builds it; IVF-PQ with 48 one-byte codes holds 69 bytes a
    vector (10M pages: 0.7 GB; 100M: 7 GB), builds faster and searches faster (p50 0.79 vs
    2.6 ms at 1M). The price is recall: recall@10 against exact search 0.60 at 1M (M 32: 0.47 at
    53 bytes, M 16: 0.29 at 37 bytes) against IVF-Flat's 1.0, while a page still finds itself
    first. An exact re-ranking stage (FAISS ``IndexRefineFlat``) gives the recall back (0.99)
    only by keeping the float32 vectors too (1,226 bytes a vector), which is what the line avoids.
    """

    type: Literal["flat", "hnsw", "ivf", "ivfpq", "auto"] = "auto"
    hnsw_m: int = Field(32, ge=4, le=256)
    hnsw_ef_search: int = Field(64, ge=8, le=4096)
    hnsw_ef_construction: int = Field(40, ge=8, le=4096)
    ivf_nlist: int = Field(0, ge=0)
    ivf_nprobe: int = Field(64, ge=1)
    auto_above: int = Field(100_000, ge=0)
    auto_kind: Literal["ivf", "ivfpq", "hnsw"] = "ivf"
    pq_above: int = Field(5_000_000, ge=0)
    pq_m: int = Field(48, ge=1, le=288)
    pq_nbits: int = Field(8, ge=1, le=12)
    build_chunk: int = Field(100_000, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _legacy_auto_hnsw_above(cls, data):
        """Collections made before the IVF option recorded ``auto_hnsw_above`` (HNSW above N)."""
        if isinstance(data, dict) and "auto_hnsw_above" in data:
            data = dict(data)
            data.setdefault("auto_above", data.pop("auto_hnsw_above"))
            data.setdefault("auto_kind", "hnsw")
        return data


class UmapSettings(_Strict):
    """UMAP (McInnes, Healy & Melville 2018, arXiv:1802.03426) before HDBSCAN.

    ``n_components`` is the dimension handed to HDBSCAN (the UMAP docs' "Using UMAP for
    clustering" recommends ~10 and ``min_dist=0.0``); a separate 2-D embedding is stored for the
    map with ``map_min_dist``.

    ``consensus_runs > 1`` clusters by evidence accumulation (Fred & Jain 2005, "Combining
    multiple clusterings using evidence accumulation", IEEE TPAMI 27(6)): that many UMAP +
    HDBSCAN runs with different seeds, then HDBSCAN on one minus their co-association matrix
    (:func:`docsort.core.clustering.consensus_labels`), which swings less from seed to seed than
    one run; it costs that many UMAP fits and an ``n x n`` matrix (8 bytes a cell), so above
    ``consensus_max_pages`` pages one run is made instead, and the clustering says so.
    """

    n_neighbors: int = Field(20, ge=2)
    n_components: int = Field(10, ge=2, le=100)
    min_dist: float = Field(0.0, ge=0.0, le=1.0)
    map_min_dist: float = Field(0.1, ge=0.0, le=1.0)
    metric: str = "cosine"
    random_state: int = 42
    consensus_runs: int = Field(9, ge=1, le=20)
    consensus_max_pages: int = Field(10000, ge=0)


class HdbscanSettings(_Strict):
    """HDBSCAN (Campello, Moulavi & Sander 2013; McInnes et al. 2017, JOSS 2(11) 205).

    ``min_cluster_size = 0`` means "choose from the collection size":
    ``max(3, round(sqrt(n_pages) / min_cluster_size_divisor))`` (with 1.45: 4 at 41 pages, 10 at
    200, 22 at 1,000, 98 at 20,000). ``min_samples = 0`` means
    ``max(1, min_cluster_size // min_samples_divisor)`` (with 3: 1 at 41 pages, 3 at 200);
    HDBSCAN's own default (equal to ``min_cluster_size``) marks far more points as noise.
    1.45 and 3 were chosen on both style-balanced development corpora (about 200 pages each) and
    sample_docs (41 pages), visual and fused, over 10 UMAP seeds: against the earlier 2 and 2
    they raise ARI and lower style leakage on all four, with seed-to-seed ARI kept
    (benchmarks/RESULTS.md, "Larger clusters with fewer core samples"). A manifest recorded
    before these two settings existed keeps 2 and 2 (:func:`docsort.store.manifest.effective_settings`).

    ``reassign_noise_threshold``: 0 (default) leaves HDBSCAN's noise alone; a value in (0, 1]
    gives a noise page the cluster whose soft-clustering membership
    (``hdbscan.all_points_membership_vectors``) is largest when that membership reaches the
    threshold; such pages are stored as ``reassigned``, apart from confident members
    (:func:`docsort.core.clustering.reassign_noise`). Off by default because on sample_docs it moved
    noise pages mostly into clusters of other kinds (issue #5). ``docsort cluster
    --reassign-noise`` overrides it.
    """

    min_cluster_size: int = Field(0, ge=0)
    min_samples: int = Field(0, ge=0)
    min_cluster_size_divisor: float = Field(1.45, gt=0.0)
    min_samples_divisor: int = Field(3, ge=1)
    cluster_selection_method: Literal["eom", "leaf"] = "eom"
    cluster_selection_epsilon: float = Field(0.0, ge=0.0)
    reassign_noise_threshold: float = Field(0.0, ge=0.0, le=1.0)


class ClassifierSettings(_Strict):
    """The document-type classifier on frozen features (the *labels/classifier* stage,
    :mod:`docsort.jobs.classify`).

    Attributes:
        threshold: a page whose probability for its best type is below this (0..1) is routed to
            "unsure" instead of that type. ``docsort classify --threshold`` overrides it.
        C: inverse L2 regularisation strength of the logistic regression (scikit-learn's
            ``LogisticRegression(C=...)``, default 1.0), fitted on standardised vectors.
        calibrate_min_per_type: post-hoc calibration (temperature scaling, Guo et al. 2017, with
            scikit-learn's ``CalibratedClassifierCV(method="temperature")``) once every type has at
            least this many labelled pages; below it the logistic regression's own probabilities
            (fitted by log-loss, so already close to calibrated: Niculescu-Mizil & Caruana 2005).
            20: below it temperature scaling left the expected calibration error worse or even on
            the development corpus (benchmarks/RESULTS.md, "Document-type classifier: calibration
            and the unsure rule").
        reject_unlike: also route a page to "unsure" when it is less like the nearest labelled page
            of its best type than labelled pages of different types typically are like each other
            (a nearest-neighbour rejection rule for types the labels do not cover).
    """

    threshold: float = Field(0.6, ge=0.0, le=1.0)
    C: float = Field(1.0, gt=0.0)
    calibrate_min_per_type: int = Field(20, ge=2)
    reject_unlike: bool = True


class OcrSettings(_Strict):
    """Optical character recognition with Tesseract (the *text* stage, :mod:`docsort.jobs.ocr`).

    OCR costs about 1.2 CPU-seconds a page here (0.4 s for a map, 5 s for a dense newspaper page;
    1.70 pages/s with 2 workers on the development corpus), about 20x the visual path's 30 pages/s
    (benchmarks/RESULTS.md), so it never runs inside the embedding loop:
    ``docsort ingest`` stores and indexes the visual vectors first and OCR runs after it
    (``enabled`` or ``--ocr``), or later with ``docsort ocr`` (resumable back-fill).

    Attributes:
        enabled: ``docsort ingest`` runs OCR on the new pages after embedding them.
        lang: Tesseract language(s), ``+``-joined (``"eng"``, ``"eng+fra"``); each needs its
            ``tesseract-ocr-LANG`` package (Debian).
        dpi: resolution PDF pages are rendered at for OCR, dots per inch. Tesseract's docs
            ("Improving the quality of the output") recommend at least 300 dpi; scans arrive at
            150-300 dpi.
        max_long_side_px: image files are OCR'd at their own resolution, downscaled only when
            their longer side exceeds this many pixels (upscaling did not help, see
            ``benchmarks/RESULTS.md``).
        psm: Tesseract page segmentation mode (``--psm``; 3 = fully automatic, its default).
        workers: OCR worker processes; 0 = one per CPU core. Each runs Tesseract single-threaded
            (``OMP_THREAD_LIMIT=1``), which is fastest per core for many pages.
        timeout_s: give up on one page after this many seconds (recorded as an OCR error).
    """

    enabled: bool = False
    lang: str = Field("eng", pattern=r"^[A-Za-z_]+(\+[A-Za-z_]+)*$")
    dpi: int = Field(200, ge=70, le=600)
    max_long_side_px: int = Field(4000, ge=500)
    psm: int = Field(3, ge=0, le=13)
    workers: int = Field(0, ge=0)
    timeout_s: float = Field(120.0, gt=0)


class TextSettings(_Strict):
    """Text features from the OCR text, and their fusion with the visual vectors
    (:mod:`docsort.core.text`).

    Attributes:
        method: ``"lsa"``: TF-IDF + truncated SVD (latent semantic analysis, Deerwester et al.
            1990; scikit-learn ``TfidfVectorizer`` + ``TruncatedSVD``), fitted on the collection's
            own text, no extra dependency. ``"minilm"``: the all-MiniLM-L6-v2 sentence embedding
            (Reimers & Gurevych 2019) from the optional extra ``docsort[minilm]``.
            ``"hub:HANDLE"``: a TF Hub text-embedding model (Universal Sentence Encoder, nnlm)
            by URL (online) or local path.
        lsa_components: dimensions of the LSA vectors (fewer when the collection has fewer
            texts). 32 was best on the development corpus (benchmarks/RESULTS.md, "Text features and
            fusion (issue 6)"); larger collections with many kinds of text may want more.
        min_df, max_df: TF-IDF vocabulary bounds (scikit-learn meaning: a word in fewer than
            ``min_df`` pages, or in more than the fraction ``max_df`` of them, is ignored).
        min_words: a page with fewer OCR words than this has no usable text: its fused vector is
            its visual vector alone.
        min_confidence: nor has a page whose mean OCR word confidence (Tesseract's 0-100) is
            below this: OCR of photographs, maps and music reads shapes as words (sample_docs:
            confidence 22-48 on those, 78-95 on printed text). 50 keeps garbage out of keyword names,
            with fused kNN@5 within 0.01 of 0 and 70 (benchmarks/RESULTS.md, "Text fusion, re-measured").
        fusion_weight: weight w of the text part in the fused page vector
            ``[sqrt(1-w) * visual, sqrt(w) * text]`` (both L2-normalised, the visual vector
            centred on the collection mean first; then the cosine of two pages with text is
            ``(1-w) cos_visual + w cos_text``); 0 = visual only. 0.3 was best on the development
            corpus and kept on issue 13's corpora (benchmarks/RESULTS.md, "Text fusion, re-measured").
        keywords: words per default cluster name (class-based TF-IDF, as BERTopic names topics).
    """

    method: str = Field("lsa", pattern=r"^(lsa|minilm|hub:.+)$")
    lsa_components: int = Field(32, ge=2)
    min_df: int = Field(2, ge=1)
    max_df: float = Field(0.5, gt=0.0, le=1.0)
    min_words: int = Field(5, ge=1)
    min_confidence: float = Field(50.0, ge=0.0, le=100.0)
    fusion_weight: float = Field(0.3, ge=0.0, le=1.0)
    keywords: int = Field(3, ge=1, le=10)


class InvarianceSettings(_Strict):
    """Scan-style-invariant visual vectors (issue 13; :mod:`docsort.core.invariance`, :mod:`docsort.core.styles`).

    At ``docsort cluster`` a linear projection is fitted on the collection itself (no labels):
    sampled pages are re-read from their files, rendered in each of ``styles``, embedded with the
    collection's extractor, and Fisher's discriminant with pages as the classes keeps the ``dims``
    directions in which pages differ more than renderings of one page. It is stored in the
    collection (``invariance.bin``, sha256 in the manifest) and applied to every vector the index,
    clustering, search and the classifier use; the stored raw vectors are never changed, so
    ``enabled = false`` gives the raw vectors back (after the next ``docsort cluster``, which also
    rebuilds nothing but the derived files).

    Attributes:
        enabled: fit and use the projection.
        dims: dimensions kept (at most pages fitted - 1). 32, as in issue 13's held-out
            measurement (benchmarks/RESULTS.md, "Scan-style invariance (issue 13)").
        styles: the renderings of each page (:data:`docsort.core.styles.STYLES`); the first should be
            ``as_is`` (its vector is the stored one, not embedded again). The default adds
            ``photo`` to the five of issue 13's measurement: it helped on both style-balanced
            development corpora (benchmarks/RESULTS.md, "The page photo in docsort's invariance fit").
        sample_pages: at most this many pages are rendered for a fit, drawn with ``seed`` (all
            pages below it). 2,000 pages x 6 renderings = 12,000 vectors, over 40 per entry of a
            288 x 288 scatter matrix, at about 5 minutes of CPU forward passes here; more pages
            add little to a 288-d covariance estimate and cost linearly.
        seed: seed of the sample and of the renderings (paper tone, JPEG quality...).
        shrinkage: ``eps = shrinkage * trace(S_w) / D`` added to the within-page scatter
            (regularised discriminant analysis, Friedman 1989).
        refit_growth: refit at ``docsort cluster`` once the collection has this fraction more
            pages than when the projection was fitted (0.5: 50 % more). Until then new pages use
            the stored projection. Pages added after a fit can bring kinds of documents (and their
            style variation) the fit never saw; refitting at every growth of 50 % keeps at least
            two thirds of the pages inside the fit while the total fitting cost over a collection's
            growth stays within a constant factor of one fit (a geometric series).
        min_pages: no projection is fitted for collections with fewer pages (the raw vectors are
            used). 100 keeps small piles (and the demo) on the raw vectors, where the evidence is
            split: the projection helps the development corpus at every size and hurts sample_docs
            (benchmarks/RESULTS.md, "Scan-style invariance (issue 13)").
    """

    enabled: bool = True
    dims: int = Field(32, ge=2, le=1024)
    styles: tuple[Literal["as_is", "bilevel", "bilevel_blur", "grey_paper", "jpeg_low", "skew", "photo"], ...] = (
        "as_is", "bilevel", "bilevel_blur", "grey_paper", "jpeg_low", "photo")
    sample_pages: int = Field(2000, ge=3)
    seed: int = 0
    shrinkage: float = Field(0.1, gt=0.0)
    refit_growth: float = Field(0.5, gt=0.0)
    min_pages: int = Field(100, ge=3)

    @field_validator("styles")
    @classmethod
    def _two_styles(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(v)) < 2 or len(set(v)) != len(v):
            raise ValueError("give at least two different styles, each once")
        return v


class RaySettings(_Strict):
    """Where ingest, OCR and clustering run: in this process (the default) or on a Ray cluster
    (:mod:`docsort.jobs.ray_ingest`; needs ``pip install 'docsort[ray]'``).

    It says where the work runs, not what it computes: the vectors, texts and clusters are the same
    either way, so it is not pinned by a collection's manifest (each command takes the pipeline's or
    ``--ray``'s).

    Attributes:
        address: ``""`` runs in this process; ``"local"`` starts Ray on this machine
            (``ray.init(num_cpus=...)``); any other value is the address of a running cluster
            (``HOST:6379`` of ``ray start --head``, or ``ray://HOST:10001`` for Ray Client), passed
            to ``ray.init(address=...)``.
        num_cpus: CPUs a ``"local"`` Ray may use; 0 = every core.
        embed_actors: feature-extractor actors of the embedding stage; 0 = one per GPU when the
            cluster has GPUs, else one per ``cpus_per_actor`` CPUs (at least 1).
        cpus_per_actor: CPUs each CPU embedding actor reserves (its TensorFlow/OpenVINO threads).
        render_cpus: CPUs each rendering or OCR task reserves.
        cluster_sample: pages UMAP and HDBSCAN are fitted on by ``cluster --ray`` (seeded by
            ``umap.random_state``); the other pages are placed by UMAP ``transform`` and
            ``hdbscan.approximate_predict`` in Ray tasks. A collection with at most this many pages
            is clustered whole, exactly as without Ray.
        transform_chunk: pages per Ray task of that placement.
        shards: how an ingest's pages come back from the cluster: ``never``, streamed to the
            driver's writer and stored one document per transaction; ``always``, written by the
            cluster's workers as Parquet shards under the collection (``shards/``) that the
            collection takes in with one transaction per shard; ``auto``, shards when the run
            has more than ``shards_above`` new pages.
        shards_above: new pages of a run above which ``auto`` uses shards. 1,000,000: the
            collection's one writer stays the bound either way (4 runs here, ~12 KB thumbnails:
            3,300-3,760 pages/s one transaction per document, 3,330-6,220 one per shard,
            benchmarks/RESULTS.md "Ray shards and IVF-PQ"), so shards gain at most ~1.8x there;
            what they change is that the rows (vector and thumbnail, ~13 KB a page) leave the
            driver: workers write them to the shared disk, only shard names stream back, the
            cluster never waits for the writer, and what was embedded survives a killed driver
            (the next ingest, on Ray or not, takes the shards in first). A million pages is ~13 GB of rows and
            3-5 minutes of writer time; below that, streaming (documents stored as they finish,
            nothing written to disk twice) is the simpler path.
        shard_pages: pages per shard (rows of one Ray Data batch written by one worker).
    """

    address: str = ""
    num_cpus: int = Field(0, ge=0)
    embed_actors: int = Field(0, ge=0)
    cpus_per_actor: float = Field(1.0, gt=0)
    render_cpus: float = Field(1.0, gt=0)
    cluster_sample: int = Field(50_000, ge=10)
    transform_chunk: int = Field(20_000, ge=100)
    shards: Literal["auto", "always", "never"] = "auto"
    shards_above: int = Field(1_000_000, ge=0)
    shard_pages: int = Field(4096, ge=1)


class DuplicateSettings(_Strict):
    """Near-duplicate families (:mod:`docsort.core.duplicates`, ``docsort duplicates``).

    Not part of a pipeline file: the maps and keypoints are a property of the page, not of the
    backbone. The thresholds are measured on two re-scan corpora
    (``benchmarks/duplicates_study.py``, benchmarks/RESULTS.md "Near-duplicate families").

    Attributes:
        render_px: the page is rendered (from its source file) with this longer side, pixels, to
            make its page map and keypoints; at 400 px (the network's render) text lines are
            2-3 px apart.
        max_skew_deg: deskew search range of the page map, +- degrees (re-scans are rotated by
            at most 1.5).
        content_share: ink regions of at least this share of the heaviest region's ink are
            content (the crop box of the page map holds them); lighter ones (a stamp in the
            margin) are left out.
        map_px: cells per side of the page map (candidate pairs).
        coarse_px: cells per side of the coarse map whose nearest neighbours are candidate
            pairs (divides map_px).
        keypoints: ORB keypoints kept per page, the strongest (1000: pair recall 0.96 on
            re-scan corpus B where 500 gave 0.87; 2000 costs 4x the matching for +0.02).
        grid: the page is divided into ``grid`` x ``grid`` cells to measure coverage.
        cell_keypoints: keypoints a cell needs to count as holding content.
        quick_keypoints: a first, cheaper test of each candidate pair matches only this many of
            each page's strongest keypoints against all of the other's (a quarter of the
            descriptor comparisons, twice); 0 = none.
        quick_inliers: fewer RANSAC inliers than this in both directions of the first test: not
            a near-duplicate, and no full verification (its RANSAC runs the iterations that find
            this many inliers with 99 % confidence, :func:`docsort.core.duplicates.ransac_iterations`).
        ratio: Lowe's ratio test: a match is kept when its Hamming distance is below this share
            of the second nearest's (Lowe 2004 used 0.8).
        ransac_px: RANSAC reprojection error, pixels of the ``render_px`` page.
        max_scale: a transform that scales by more than this (or less than its inverse) is no
            re-scan.
        min_coverage: least coverage (share of both pages' content cells that one transform
            explains, :func:`docsort.core.duplicates.verify_pairs`) for a near-duplicate pair.
        min_text_jaccard: least MinHash-estimated Jaccard similarity of two pages' OCR word sets,
            in [0, 1], that with ``min_coverage_text`` also makes a pair whose pages both have text.
        min_coverage_text: the coverage that suffices with the words.
        min_words: distinct OCR words (two or more letters) a page needs to count as having text.
        num_perm: MinHash permutations (datasketch; standard error about 1/sqrt(num_perm)).
        k: nearest neighbours per page (by coarse map and by visual vector) that become
            candidates (15: 98 % and 99 % of the true pairs of the two re-scan corpora are among
            them and pair recall is 0.984 / 0.968, against 99 % / 100 % and 0.992 / 0.968 with 20,
            for three quarters of the candidate pairs: 100,000 pages in 7 minutes instead of
            11-13; 10: 96 % and 94 %; benchmarks/RESULTS.md).
        exact_below: up to this many pages the neighbours are exact (FAISS ``IndexFlatIP``),
            above it approximate (``IndexHNSWFlat``).
        hnsw_m: HNSW graph degree.
        conflict_px: after the pair's transform, ink of one page farther than this from the
            other page's ink (pixels of the ``render_px`` page) is missing from the other
            (:func:`docsort.core.duplicates.content_conflicts`).
        conflict_grid: the page is divided into ``conflict_grid`` x ``conflict_grid`` cells for
            that check.
        conflict_share: a cell is missing from the other page when at least this share of its ink is.
        max_conflict_cells: a pair that passed the keypoints is *not* a near-duplicate when
            each page has at least this many such cells outside its largest region of them (one
            stamp or note is allowed; different digits all over a calendar month are not); 0 = no
            check. 2: on the two re-scan corpora no true pair has more than 1 (440 pairs), and 51
            of the 52 pairs of different calendar months that coverage 0.3 accepts have at
            least 2 (benchmarks/RESULTS.md, "Near-duplicate families").
    """

    render_px: int = Field(1000, ge=200, le=4096)
    max_skew_deg: float = Field(2.0, ge=0.0, le=10.0)
    content_share: float = Field(0.25, gt=0.0, le=1.0)
    map_px: int = Field(64, ge=16, le=256)
    coarse_px: int = Field(16, ge=4, le=64)
    keypoints: int = Field(1000, ge=50, le=20000)
    grid: int = Field(8, ge=2, le=16)
    cell_keypoints: int = Field(3, ge=1)
    quick_keypoints: int = Field(250, ge=0)
    quick_inliers: int = Field(8, ge=1)
    ratio: float = Field(0.8, gt=0.0, le=1.0)
    ransac_px: float = Field(4.0, gt=0.0)
    max_scale: float = Field(1.6, ge=1.0)
    min_coverage: float = Field(0.4, ge=0.0, le=1.0)
    min_text_jaccard: float = Field(0.4, ge=0.0, le=1.0)
    min_coverage_text: float = Field(0.2, ge=0.0, le=1.0)
    min_words: int = Field(20, ge=1)
    num_perm: int = Field(128, ge=16, le=1024)
    k: int = Field(15, ge=1, le=1000)
    exact_below: int = Field(20000, ge=2)
    hnsw_m: int = Field(16, ge=4, le=128)
    conflict_px: int = Field(3, ge=0, le=50)
    conflict_grid: int = Field(24, ge=2, le=256)
    conflict_share: float = Field(0.5, gt=0.0, le=1.0)
    max_conflict_cells: int = Field(2, ge=0)

    @model_validator(mode="after")
    def _coarse_divides(self) -> "DuplicateSettings":
        if self.map_px % self.coarse_px:
            raise ValueError(f"coarse_px {self.coarse_px} must divide map_px {self.map_px}")
        return self


class PipelineSettings(_Strict):
    """A whole pipeline: the settings of every stage plus its name.

    Raises:
        pydantic.ValidationError: on unknown keys or invalid values (wrapped in
            :class:`PipelineError` by :func:`load_pipeline`).
    """

    name: str = "default"
    description: str = ""
    render: RenderSettings = RenderSettings()
    features: FeatureSettings = FeatureSettings()
    index: IndexSettings = IndexSettings()
    umap: UmapSettings = UmapSettings()
    hdbscan: HdbscanSettings = HdbscanSettings()
    classifier: ClassifierSettings = ClassifierSettings()
    ocr: OcrSettings = OcrSettings()
    text: TextSettings = TextSettings()
    invariance: InvarianceSettings = InvarianceSettings()
    ray: RaySettings = RaySettings()

    def with_overrides(self, **features: object) -> "PipelineSettings":
        """Return a copy with some ``features`` settings replaced (e.g. ``weights="random"``).

        ``None`` values are ignored, so CLI options left unset keep the pipeline's values.
        """
        changes = {k: v for k, v in features.items() if v is not None}
        if not changes:
            return self
        merged = self.features.model_dump() | changes
        return self.model_copy(update={"features": FeatureSettings(**merged)})

    def with_ray(self, address: str | None = None, ray: "RaySettings | None" = None) -> "PipelineSettings":
        """Return a copy that runs where ``address`` says (``None``: keep), with the ``ray`` section
        ``ray`` (``None``: keep this one's)."""
        section = ray if ray is not None else self.ray
        if address is not None:
            section = section.model_copy(update={"address": address})
        return self if section == self.ray else self.model_copy(update={"ray": section})


def pipeline_search_path() -> list[Path]:
    """Folders searched for ``NAME.toml``, first match wins.

    ``$DOCSORT_PIPELINES`` (os.pathsep-separated), ``./pipelines``, the ``pipelines/`` folder of
    the source checkout this package was imported from, and the pipelines installed with the
    package (``docsort/pipelines/*.toml`` in a wheel: the same files as the repository's
    ``pipelines/``, see ``pyproject.toml``).
    """
    dirs: list[Path] = []
    env = os.environ.get("DOCSORT_PIPELINES")
    if env:
        dirs += [Path(p) for p in env.split(os.pathsep) if p]
    dirs.append(Path.cwd() / "pipelines")
    package = Path(__file__).resolve().parent.parent  # docsort/ (this file is docsort/config/settings.py)
    dirs.append(package.parent / "pipelines")
    dirs.append(package / "pipelines")
    return dirs


def load_pipeline(name_or_path: str | os.PathLike[str] = "default") -> PipelineSettings:
    """Load and validate a pipeline by name (searched in :func:`pipeline_search_path`) or path.

    Args:
        name_or_path: a pipeline name such as ``"default"`` or a path to a ``.toml`` file.

    Returns:
        The validated :class:`PipelineSettings`.

    Raises:
        PipelineError: the file is not found, is not valid TOML, or does not match the schema;
            the message names the file and the offending keys.
    """
    text = str(name_or_path)
    path: Path | None = None
    if text.endswith(".toml") or os.sep in text or Path(text).is_file():
        path = Path(text)
        if not path.is_file():
            raise PipelineError(f"{path}: pipeline file not found")
    else:
        for d in pipeline_search_path():
            if (d / f"{text}.toml").is_file():
                path = d / f"{text}.toml"
                break
        if path is None:
            if text == "default":
                return PipelineSettings()
            searched = ", ".join(str(d) for d in pipeline_search_path())
            raise PipelineError(f"pipeline {text!r} not found (searched {searched})")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PipelineError(f"{path}: cannot read pipeline: {exc}") from exc
    data.setdefault("name", path.stem)
    try:
        return PipelineSettings(**data)
    except ValidationError as exc:
        raise PipelineError(f"{path}: invalid pipeline settings:\n{exc}") from exc
