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
# Another apt or dpkg (unattended-upgrades, a second install) may hold the package locks: wait for
# them for up to DOCSORT_APT_LOCK_TIMEOUT seconds instead of failing at once. apt-get install waits by
# itself with DPkg::Lock::Timeout (apt >= 1.9.11); apt-get update's lists lock is not covered by that
# option, so update is retried while its error is a lock, and only then.
LOCK_TIMEOUT="${DOCSORT_APT_LOCK_TIMEOUT:-300}"
APT=($SUDO apt-get -o DPkg::Lock::Timeout="$LOCK_TIMEOUT")
waited=0
until out=$("${APT[@]}" update -qq 2>&1); do
  if ! grep -q "Could not get lock" <<<"$out" || [ "$waited" -ge "$LOCK_TIMEOUT" ]; then
    echo "$out" >&2
    exit 1
  fi
  [ "$waited" -eq 0 ] && echo "docsort: waiting for another package manager to finish (up to ${LOCK_TIMEOUT} s)" >&2
  sleep 5
  waited=$((waited + 5))
done
DEBIAN_FRONTEND=noninteractive "${APT[@]}" install -y -qq --no-install-recommends "${need[@]}" >/dev/null
