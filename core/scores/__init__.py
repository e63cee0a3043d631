"""What raw scores mean: metrics (AUROC, AUPRO, F1), evaluation over a test set, calibration (good-score
statistics and thresholds, kept as data), operating points on the curves, the unfamiliar-image guard's limits.
Pure functions over arrays; nothing here loads a model or writes the store."""
