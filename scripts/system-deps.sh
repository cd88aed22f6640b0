#!/usr/bin/env bash
# Install the system programs docsort needs, only where they are missing.
#   bash scripts/system-deps.sh          poppler-utils (pdftoppm, pdfinfo: PDF rendering) and
#                                        tesseract-ocr + tesseract-ocr-eng (OCR: docsort ocr, ingest --ocr)
#   bash scripts/system-deps.sh --test   the above, plus Chromium for the real-browser UI test
# Other OCR languages: apt-get install tesseract-ocr-LANG (e.g. tesseract-ocr-fra), then --ocr-lang eng+fra.
# Debian/Ubuntu (apt-get; uses sudo when not root). On macOS: `brew install poppler tesseract`.
set -euo pipefail
need=()
command -v pdftoppm >/dev/null 2>&1 && command -v pdfinfo >/dev/null 2>&1 || need+=(poppler-utils)
command -v tesseract >/dev/null 2>&1 || need+=(tesseract-ocr)
# English language data (Debian's tesseract-ocr depends on it; named so that a tesseract without it,
# e.g. one built from source, gets it too).
{ command -v tesseract >/dev/null 2>&1 && tesseract --list-langs 2>/dev/null | grep -qx eng; } || need+=(tesseract-ocr-eng)
if [ "${1:-}" = "--test" ]; then
  [ -x /usr/bin/chromium ] || need+=(chromium)
fi
[ ${#need[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "docsort: please install ${need[*]} with your system's package manager (macOS: brew install poppler tesseract)" >&2
  exit 1
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "docsort: installing ${need[*]}" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
