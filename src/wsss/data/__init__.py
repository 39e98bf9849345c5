"""Datasets, transforms, the DataModule and the toy-data generator."""
