"""docsort: sort piles of scanned documents by how they look.

Stages, data flowing one way (one module each):
files -> :mod:`docsort.core.pages` -> :mod:`docsort.core.features` -> :mod:`docsort.store.storage` /
:mod:`docsort.core.index` -> :mod:`docsort.core.clustering` -> CLI (:mod:`docsort.faces.cli`) and UI (``app.py``),
composed by :mod:`docsort.jobs.pipeline` with settings from :mod:`docsort.config.settings`.
"""

__version__ = "0.1.0"

# Before any submodule imports TensorFlow: what TensorFlow reads at import (docsort.core.runtime).
from docsort.core import runtime as _runtime  # noqa: E402,F401
