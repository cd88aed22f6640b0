"""Layer 5: the jobs, the only writers (ingest, ocr, cluster, classify, adapt, export, uploads), each
taking the collection's lock. May use :mod:`docsort.queries` and everything below."""
