"""Speed of near-duplicate families at 100,000 pages (issue 18 target: <= 10 minutes on this machine).

Embedding and rendering 100,000 real pages is not possible here in a session (the render alone is
about 80 pages/s per core, the network 44 pages/s), so this synthesises what the family step gets
from the collection: page maps (smooth random ink maps, uint8 64 x 64), L2-normalised 288-d visual
vectors, MinHash signatures for half the pages, and ORB keypoints: each page gets the real
keypoints of a sample_docs page (rendered at ``render_px``) with their positions shuffled among
themselves (real descriptors, so the ratio test passes as often as between real pages, but no
consistent geometry); ``--planted`` of the pages get a near-duplicate (the map shifted by up to 4
cells, noise added, the vector perturbed, 85 % of the MinHash values kept, the keypoints moved by
a random similarity transform with 1 px jitter, a quarter of them replaced; the ink of a real
sample_docs page for the original and that ink moved by the same transform for the copy, so that
the check after the keypoints, :func:`docsort.core.duplicates.pair_conflicts`, runs on every
planted pair as it would on real ones). It times
:func:`docsort.core.duplicates.candidate_pairs` (FAISS kNN and MinHashLSH) and
:func:`docsort.core.duplicates.find_families` (verification of every candidate pair, connected
components) and checks the planted pairs were found.

    python benchmarks/duplicates_speed.py [--pages 100000] [--planted 5000]

Making the page maps themselves is per page and separate: ``benchmarks/duplicates_study.py``
reports its ms/page (it runs once per page, when the page is new).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def synthesise(n: int, planted: int, side: int, seed: int = 0):
    """``(maps uint8 (n, side, side), vectors float32 (n, 288), minhashes uint64 (n, 128), has_text bool (n,), pairs int64 (planted, 2))``."""
    from scipy.ndimage import zoom

    rng = np.random.default_rng(seed)
    base = n - planted
    coarse = rng.random((base, side // 8, side // 8), dtype=np.float32)
    maps = np.empty((n, side, side), np.uint8)
    for start in range(0, base, 5000):
        block = zoom(coarse[start : start + 5000], (1, 8, 8), order=1)
        fine = rng.random(block.shape, dtype=np.float32)
        maps[start : start + len(block)] = np.clip(255 * (0.6 * block + 0.4 * fine), 0, 255).astype(np.uint8)
    src = rng.choice(base, planted, replace=False)
    for k, s in enumerate(src):
        dy, dx = rng.integers(-4, 5, 2)
        m = np.roll(maps[s].astype(np.float32), (int(dy), int(dx)), axis=(0, 1)) + rng.normal(0, 6, (side, side))
        maps[base + k] = np.clip(m, 0, 255).astype(np.uint8)
    vectors = rng.normal(size=(n, 288)).astype(np.float32)
    vectors[base:] = vectors[src] + 0.3 * rng.normal(size=(planted, 288)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    minhashes = rng.integers(0, 2**32, size=(n, 128), dtype=np.uint64)
    keep = rng.random((planted, 128)) < 0.85
    minhashes[base:] = np.where(keep, minhashes[src], minhashes[base:])
    has_text = rng.random(n) < 0.5
    has_text[base:] = has_text[src]
    return maps, vectors, minhashes, has_text, np.stack([src, base + np.arange(planted)], 1)


def synthetic_keypoints(n: int, planted: np.ndarray, settings, seed: int = 0) -> tuple[list[np.ndarray], dict[int, bytes]]:
    """One :data:`KEYPOINT_DTYPE` array per page and ``{row: page_ink bytes}`` for the pages of the
    planted pairs (see the module docstring)."""
    import cv2
    from PIL import Image

    from docsort.config.settings import RenderSettings
    from docsort.core.duplicates import decode_ink, page_ink, page_keypoints
    from docsort.core.pages import SourceFile, discover_files, iter_pages

    rng = np.random.default_rng(seed)
    pool, inks = [], []
    render = RenderSettings(long_side_px=settings.render_px, color="gray")
    for src in discover_files([REPO / "sample_docs"]):
        if not isinstance(src, SourceFile):  # labels.csv, LICENSES: not documents
            continue
        for page in iter_pages(src, render):
            kp = page_keypoints(page.image, settings)
            if len(kp) >= 100:
                pool.append(kp)
                inks.append(decode_ink(page_ink(page.image, settings)))
    ink_of: dict[int, bytes] = {}
    out = []
    for _ in range(n):
        kp = pool[int(rng.integers(len(pool)))].copy()
        perm = rng.permutation(len(kp))
        kp["x"], kp["y"], kp["cell"] = kp["x"][perm], kp["y"][perm], kp["cell"][perm]
        out.append(kp)
    for src, dup in planted:
        kp = out[int(src)].copy()
        angle, scale = np.deg2rad(rng.uniform(-1.5, 1.5)), rng.uniform(0.8, 0.95)
        c, s_ = scale * np.cos(angle), scale * np.sin(angle)
        x, y = kp["x"].astype(np.float64), kp["y"].astype(np.float64)
        tx, ty = rng.uniform(0, 50), rng.uniform(0, 50)
        kp["x"] = np.clip(c * x - s_ * y + tx + rng.normal(0, 1, len(kp)), 0, 65535)
        kp["y"] = np.clip(s_ * x + c * y + ty + rng.normal(0, 1, len(kp)), 0, 65535)
        swap = rng.random(len(kp)) < 0.25
        other = pool[int(rng.integers(len(pool)))]
        kp["d"][swap] = other["d"][rng.integers(len(other), size=int(swap.sum()))]
        out[int(dup)] = kp
        ink = inks[int(rng.integers(len(inks)))]
        moved = cv2.warpAffine(ink.astype(np.uint8), np.array([[c, -s_, tx], [s_, c, ty]]), ink.shape[::-1],
                               flags=cv2.INTER_NEAREST, borderValue=0)
        for row, im in ((int(src), ink), (int(dup), moved > 0)):
            ink_of[row] = page_ink(Image.fromarray(np.where(im, 0, 255).astype(np.uint8)), settings)
    return out, ink_of


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=100_000)
    ap.add_argument("--planted", type=int, default=5_000)
    ap.add_argument("--k", type=int, default=None, help="candidate neighbours (DuplicateSettings.k; default: the default)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "duplicates_speed.json")
    args = ap.parse_args()

    from docsort.config.settings import DuplicateSettings
    from docsort.core.duplicates import candidate_pairs, find_families, pair_conflicts

    s = DuplicateSettings() if args.k is None else DuplicateSettings(k=args.k)
    t0 = time.perf_counter()
    maps, vectors, minhashes, has_text, planted = synthesise(args.pages, args.planted, s.map_px)
    keypoints, ink_of = synthetic_keypoints(args.pages, planted, s)
    t_syn = time.perf_counter() - t0
    t1 = time.perf_counter()
    pairs = candidate_pairs(maps, vectors, minhashes, has_text, s)
    t_cand = time.perf_counter() - t1
    t2 = time.perf_counter()
    # Families without the ink check, then the check on the pairs they accepted, timed apart
    # (find_families with ``inks`` does the same two steps in one call).
    fams = find_families(maps, keypoints, vectors, minhashes, has_text, s, pairs=pairs)
    t_fam = time.perf_counter() - t2
    t3 = time.perf_counter()
    conflicts = pair_conflicts(keypoints, fams.pairs, lambda rows: [ink_of.get(int(r)) for r in rows], s)
    t_check = time.perf_counter() - t3
    fam = np.full(args.pages, -1)
    fam[fams.rows] = fams.family
    found = float(np.mean((fam[planted[:, 0]] >= 0) & (fam[planted[:, 0]] == fam[planted[:, 1]])))
    result = {"pages": args.pages, "planted": args.planted, "candidate_pairs": int(len(pairs)), "synthesis_s": round(t_syn, 1),
              "candidates_s": round(t_cand, 1), "scoring_and_families_s": round(t_fam, 1),
              "ink_check_s": round(t_check, 1), "pairs_checked": int(len(fams.pairs)),
              "pairs_rejected_by_the_check": int((conflicts >= s.max_conflict_cells).sum()),
              "total_s": round(t_cand + t_fam + t_check, 1),
              "verify_ms_per_pair": round(1000 * t_fam / max(1, len(pairs)), 3), "cpu_s": round(time.process_time(), 1),
              "planted_found": round(found, 4), "families": int(len(np.unique(fams.family))),
              "loadavg": Path("/proc/loadavg").read_text().split()[:3]}
    print(json.dumps(result, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
