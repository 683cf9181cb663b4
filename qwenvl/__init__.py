"""Fine-tune Qwen3-VL on driving video to predict the next second's ego motion."""
