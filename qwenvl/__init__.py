"""Fine-tune Qwen3-VL on driving video to predict the next second's ego motion.

The stages, in pipeline order, are subpackages: prepare (raw dataset -> labelled segments ->
dataset), data (the registry, training files and dataset), train, inference and evaluate; the
stand-ins for the hub are in standins. Modules at this level are what every stage shares: the
answer format, the chat and its prompt, a segment's record, video settings, model loading,
checkpoint files, ranks, output files and command-line plumbing.
"""
