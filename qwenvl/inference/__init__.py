"""Inference: load any checkpoint with what it was trained on (load), and answer clips in
batches, constrained to the answer grammar by default (generate)."""
