"""UL2 / UL2R data: denoisers and presets, length arithmetic, tf.data preprocessors, corpus sources,
task registration (docs/ul2r.md)."""
