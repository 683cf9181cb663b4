"""Stage 3, train: what trains (settings, setup), the Trainer with per-module learning rates and
the label-only loss (trainer), resuming from a complete checkpoint (resume), task metrics while
training (task_metrics) and the compute report (compute)."""
