"""Models on disk and in memory: the versioned model store (``model_store``), making and loading versions
(``lifecycle``: train -> calibrate -> save; load ready to score; save thresholds; run evaluations) and the one
cache of loaded models (``model_cache``)."""
