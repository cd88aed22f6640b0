"""Build a benchmark corpus of N real scanned pages from sample_docs/ (PDF, TIFF, PNG, JPEG mixed).

Each copy gets a unique trailer after the file's end marker (PDF ``%%EOF``, JPEG EOI, PNG IEND,
TIFF data), which every reader ignores, so the pages are real scans but every file has its own
sha256 and docsort ingests it as a new document.

    python benchmarks/corpus.py OUT_DIR --pages 2000
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

SAMPLE = Path(__file__).resolve().parent.parent / "sample_docs"


def sample_files() -> list[tuple[Path, int]]:
    """(path, pages) for every file of sample_docs/, from labels.csv, in file order."""
    counts: dict[str, int] = {}
    with open(SAMPLE / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            counts[row["file"]] = counts.get(row["file"], 0) + 1
    return [(SAMPLE / name, n) for name, n in sorted(counts.items())]


def build_corpus(out: Path, pages: int, formats: tuple[str, ...] = (".pdf", ".tif", ".png", ".jpg")) -> tuple[int, int]:
    """Write copies of sample files into ``out`` until at least ``pages`` pages exist.

    Reuses an existing corpus of the same size. Returns (files, pages) written.
    """
    out.mkdir(parents=True, exist_ok=True)
    marker = out / f".corpus-{pages}"
    files = [(p, n) for p, n in sample_files() if p.suffix in formats]
    if marker.exists():
        return int(marker.read_text().split()[0]), pages
    total, i = 0, 0
    while total < pages:
        src, n = files[i % len(files)]
        data = src.read_bytes() + f"\n%docsort-benchmark-copy-{i}\n".encode()
        (out / f"{i:06d}-{src.name}").write_bytes(data)
        total += n
        i += 1
    marker.write_text(f"{i} files {total} pages\n")
    return i, total


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--pages", type=int, default=2000)
    a = ap.parse_args()
    print(build_corpus(a.out, a.pages))
