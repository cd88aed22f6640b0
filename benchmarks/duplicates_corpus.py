"""Re-scan corpora for near-duplicate families (issue 18): real pages, some scanned again.

A *corpus* is a set of real scanned documents (folders with a ``labels.csv``) plus, in
``OUT/rescans/``, single-page JPEG *re-scans* of a seeded choice of their pages. Each re-scan is
the page rendered at 1400 px (long side), then, like a second pass through a scanner:

* scaled to 80-95 % and pasted at a random offset on a white sheet of the original size,
* rotated by up to +-1.5 degrees (bicubic, white fill),
* for half of them, a rubber stamp ("RECEIVED <day> MAR", a box and text) somewhere on the page,
* Gaussian noise (sigma 2-8 grey levels),
* saved as a JPEG of quality 40-70.

Pages are chosen document by document (every page of a chosen multi-page document is re-scanned),
so the other pages of the same document, same letterhead and same layout, are present as
originals *and* as re-scans: the hard negatives. ``OUT/truth.csv`` says which page each re-scan
came from (``rescan, source, page``; ``source`` is the absolute path of the original file, plus
the re-scan's scale, angle, stamp, noise and quality); ``OUT/sources.txt`` lists the source folders.

    python benchmarks/duplicates_corpus.py --name A --source sample_docs \\
        --source /work/wt13e/benchmarks/out/dev_styles --out benchmarks/out/dups_A

The originals are not copied: ingest the ``--source`` folders and ``OUT/rescans`` together.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def rescan(image, rng: np.random.Generator):
    """One simulated re-scan of a page.

    Args:
        image: the page, a PIL image (any mode; converted to grey).
        rng: the random generator (seeded by the caller).

    Returns:
        ``(PIL "L" image of the original's size, JPEG quality 40-70, description dict)``.
    """
    from PIL import Image, ImageDraw, ImageFont

    im = image.convert("L")
    w, h = im.size
    s = float(rng.uniform(0.8, 0.95))
    small = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.LANCZOS)
    sheet = Image.new("L", (w, h), 255)
    ox, oy = int(rng.integers(0, w - small.width + 1)), int(rng.integers(0, h - small.height + 1))
    sheet.paste(small, (ox, oy))
    angle = float(rng.uniform(-1.5, 1.5))
    sheet = sheet.rotate(angle, resample=Image.BICUBIC, expand=False, fillcolor=255)
    stamped = bool(rng.random() < 0.5)
    if stamped:
        d = ImageDraw.Draw(sheet)
        bw, bh = int(0.3 * w), int(0.06 * h)
        x0, y0 = int(rng.uniform(0.05, 0.65) * w), int(rng.uniform(0.05, 0.9) * h)
        d.rectangle([x0, y0, x0 + bw, y0 + bh], outline=70, width=max(2, w // 250))
        try:
            font = ImageFont.load_default(size=max(10, bh // 2))
        except TypeError:  # Pillow < 10.1
            font = ImageFont.load_default()
        d.text((x0 + bw // 10, y0 + bh // 5), f"RECEIVED {int(rng.integers(1, 29))} MAR", fill=70, font=font)
    sigma = float(rng.uniform(2, 8))
    a = np.asarray(sheet, np.float32) + rng.normal(0, sigma, (h, w)).astype(np.float32)
    quality = int(rng.integers(40, 71))
    out = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    return out, quality, {"scale": s, "angle": angle, "stamp": stamped, "noise": sigma, "quality": quality}


def build(name: str, sources: list[Path], out: Path, *, documents: int, copies: int, seed: int) -> int:
    """Write ``out/rescans/*.jpg`` and ``out/truth.csv`` (see the module docstring).

    Args:
        name: corpus name (goes into the file names).
        sources: folders of real documents.
        out: output folder (its ``rescans`` folder is replaced).
        documents: how many documents to re-scan (all their pages), chosen with ``seed``.
        copies: re-scans per page.
        seed: the random seed.

    Returns:
        The number of re-scans written.
    """
    import shutil

    from docsort.config.settings import RenderSettings
    from docsort.core.pages import discover_files, iter_pages

    rng = np.random.default_rng(seed)
    files = [f for f in discover_files(sources) if not isinstance(f, Exception)]
    files.sort(key=lambda f: str(f.path))
    # Group files into documents: "tar-p1.jpg", "tar-p2.jpg" are pages of one document.
    import re

    def doc_key(p: Path) -> str:
        return str(p.parent / re.sub(r"-p\d+$", "", p.stem))

    docs: dict[str, list] = {}
    for f in files:
        docs.setdefault(doc_key(Path(f.path)), []).append(f)
    keys = sorted(docs)
    multi = [k for k in keys if len(docs[k]) > 1 or Path(docs[k][0].path).suffix.lower() in (".pdf", ".tif", ".tiff")]
    chosen = list(rng.choice(multi, size=min(documents, len(multi)), replace=False))
    rdir = out / "rescans"
    shutil.rmtree(rdir, ignore_errors=True)
    rdir.mkdir(parents=True)
    render = RenderSettings(long_side_px=1400, color="gray")
    rows = []
    for key in sorted(chosen):
        for f in docs[key]:
            for page in iter_pages(f, render):
                for c in range(copies):
                    im, q, desc = rescan(page.image, rng)
                    fname = f"{name}-{len(rows):04d}.jpg"
                    im.save(rdir / fname, quality=q)
                    rows.append({"rescan": fname, "source": str(Path(f.path).resolve()), "page": page.page_no, **desc})
    (out / "sources.txt").write_text("".join(f"{Path(s).resolve()}\n" for s in sources))
    with open(out / "truth.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return len(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--source", type=Path, action="append", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--documents", type=int, default=30)
    ap.add_argument("--copies", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    n = build(a.name, a.source, a.out, documents=a.documents, copies=a.copies, seed=a.seed)
    print(f"{n} re-scans in {a.out / 'rescans'}")


if __name__ == "__main__":
    main()
