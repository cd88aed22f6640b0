"""Layer 3: the collection on disk. Every SQL statement and every file name under a collection
directory lives here (:mod:`docsort.store.storage`); imports :mod:`docsort.core` and :mod:`docsort.config`."""
