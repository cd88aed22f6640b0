"""The fitted models kept in a collection, one joblib file each, written and read here only:
``clustering.joblib`` (UMAP + HDBSCAN of the last clustering), ``text_model.joblib`` (the text
model), ``classifier.joblib`` (the document-type classifier). Each write is atomic (a temporary file
renamed over the old one), so a crash leaves the old model or the new one, never half of one.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Literal

from docsort.store.storage import Collection, atomic_write_bytes

__all__ = ["MODEL_FILES", "model_path", "save_model", "load_model"]

ModelKind = Literal["clustering", "text", "classifier"]

#: The file of each kind of model, inside the collection.
MODEL_FILES: dict[str, str] = {"clustering": Collection.MODELS, "text": Collection.TEXT_MODEL, "classifier": Collection.CLASSIFIER}


def model_path(collection: Collection, kind: ModelKind) -> Path:
    """Where the model of ``kind`` is kept. Raises KeyError for an unknown kind."""
    return collection.root / MODEL_FILES[kind]


def save_model(collection: Collection, kind: ModelKind, obj: Any) -> Path:
    """Pickle ``obj`` with joblib and replace the collection's model of ``kind`` atomically (the
    caller holds the collection's write lock). Returns the file's path."""
    import joblib

    buf = io.BytesIO()
    joblib.dump(obj, buf)
    path = model_path(collection, kind)
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_model(collection: Collection, kind: ModelKind) -> Any:
    """The collection's model of ``kind`` as joblib unpickles it.

    Raises:
        FileNotFoundError: none is stored; any exception of unpickling (a truncated file, or one
            pickled by incompatible library versions), which callers treat as "refit".
    """
    import joblib

    return joblib.load(model_path(collection, kind))
