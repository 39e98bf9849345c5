"""LightningModules: classifier, refiner, segmenter (no file I/O here)."""
