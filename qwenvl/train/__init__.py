"""Model setup and the trainer for fine-tuning Qwen3-VL."""
