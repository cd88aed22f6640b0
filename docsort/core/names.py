"""Safe file and folder names from untrusted text (browser upload names, cluster and type names)."""

from __future__ import annotations

import re
import unicodedata

_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}


_SAFE_PUNCT = set(" ._-()+,#@&=[]")


def _clean(name: str) -> str:
    text = unicodedata.normalize("NFKC", str(name))
    text = re.split(r"[\\/]", text)[-1]
    text = "".join(ch if (ch.isalnum() or ch in _SAFE_PUNCT) else "_" for ch in text)
    text = re.sub(r"\s+", " ", text).strip(" .")
    return text if text.strip("_ .") else ""


def sanitise_name(name: str, *, fallback: str = "upload", max_len: int = 120) -> str:
    """A file or folder name that is safe to join onto a directory.

    Keeps only the last path component (after ``/`` or ``\\``), NFKC-normalises it, replaces every
    character that is not a letter, digit or one of `` ._-()+,#@&=[]`` with ``_`` (so control
    characters, ``:`` and path separators never survive), collapses whitespace, strips leading and
    trailing dots and spaces (no ``..``, no hidden files), avoids Windows device names, and caps the
    length at ``max_len`` characters keeping the extension.

    Args:
        name: the untrusted name (e.g. what a browser sent).
        fallback: used when nothing usable is left; it is sanitised too.
        max_len: longest result, characters (>= 16).

    Returns:
        A non-empty name without path separators that is neither ``.`` nor ``..``.
    """
    max_len = max(16, int(max_len))
    text = _clean(name) or _clean(fallback) or "upload"
    stem, dot, suffix = text.rpartition(".")
    if not dot or not stem or len(suffix) > 10:
        stem, suffix = text, ""
    if stem.split(" ")[0].casefold() in _WINDOWS_RESERVED:
        stem = "_" + stem
    suffix = f".{suffix}" if suffix else ""
    stem = stem[: max_len - len(suffix)].rstrip(" .") or "upload"
    return stem + suffix
