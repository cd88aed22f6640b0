"""Layer 2: pure stages, arrays and images in, arrays out (pages, features, weights, text, clustering,
index, invariance, styles, adapt). No Collection, no SQL, no lock; imports only :mod:`docsort.config`.
Only :mod:`docsort.core.features` (with its helpers weights / openvino_engine / adapt / text) imports
Keras, TensorFlow or TF Hub."""
