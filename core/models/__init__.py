"""The networks: the table of model kinds (``registry``), PatchCore and EfficientAD configured and extended from
anomalib, their backbone, coreset, memory-bank search, map smoothing, ONNX Runtime graphs, the device policy,
tiles, preprocessing and the similar-image index. Raw scores and maps out; no thresholds, no files of the store."""
