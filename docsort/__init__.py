"""docsort: sort piles of scanned documents by how they look.

Stages, data flowing one way (one module each):
files -> :mod:`docsort.core.pages` -> :mod:`docsort.core.features` -> :mod:`docsort.store.storage` /
:mod:`docsort.core.index` -> :mod:`docsort.core.clustering` -> CLI (:mod:`docsort.faces.cli`) and UI (``app.py``),
composed by the jobs (:mod:`docsort.jobs`) and read by the queries (:mod:`docsort.queries`), with settings from
:mod:`docsort.config.settings`. Layers and their import rules: README "How it works", checked by import-linter.
"""

__version__ = "0.1.0"

# Before any submodule imports TensorFlow: what TensorFlow reads at import (docsort.core.runtime).
from docsort.core import runtime as _runtime  # noqa: E402,F401
