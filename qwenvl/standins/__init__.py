"""Stand-ins for what needs the hub, so tests and the demo run offline: synthetic clips in the
dataset's layout (synthetic), a tiny Qwen3-VL built in code (tiny), and the published 2B / 4B /
8B shapes with random weights for benchmarks (architectures)."""
