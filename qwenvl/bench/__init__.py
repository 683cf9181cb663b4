"""The benchmarks of scripts/benchmark.py, one module each: prep (segmenting), loader (the
training data loader), training (step time, MFU), generation (answers per second, per backend)
and scale (the dataset steps and a rank's start-up at a million segments). Each measures our way
against the naive one on the same inputs; the naive ways live apart in reference, with the
extra dependencies they need (the bench extra: OpenCV, qwen-vl-utils, decord)."""
