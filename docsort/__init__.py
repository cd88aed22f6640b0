"""docsort: sort piles of scanned documents by how they look.

Stages, data flowing one way (one module each):
files -> :mod:`docsort.pages` -> :mod:`docsort.features` -> :mod:`docsort.storage` /
:mod:`docsort.index` -> :mod:`docsort.clustering` -> CLI (:mod:`docsort.cli`) and UI (``app.py``),
composed by :mod:`docsort.pipeline` with settings from :mod:`docsort.settings`.
"""

__version__ = "0.1.0"

# Before any submodule imports TensorFlow: what TensorFlow reads at import (docsort.runtime).
from . import runtime as _runtime  # noqa: E402,F401
