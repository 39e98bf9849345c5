"""Cost of a run: per-step measurements (``measure``) and the projection of a full run from them (``estimate``)."""
