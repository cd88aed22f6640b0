"""Layer 1 (bottom): settings and their defaults (the only place defaults live), pipeline files, and the
resolution of a collection's pinned settings. Imports no other docsort layer and never Keras."""
