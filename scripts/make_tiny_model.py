#!/usr/bin/env python
"""Write a tiny random Qwen3-VL (about 1M parameters) and its processor, built offline in code.

2 text and 2 vision layers with deepstack; a byte-level BPE tokenizer with the Qwen special
tokens and a Qwen3-VL-style chat template. Loadable with `from_pretrained(DIR)`.
"""

from __future__ import annotations

import argparse
import sys

from qwenvl.cli import run_script
from qwenvl.files import atomic_output_dir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", required=True, help="directory to write the model into")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the random weights (default: %(default)s)"
    )
    parser.add_argument(
        "--overwrite-output", action="store_true", help="replace an existing output directory"
    )
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    with atomic_output_dir(args.output_dir, args.overwrite_output) as tmp:
        from qwenvl.standins.tiny import build_tiny_model

        model = build_tiny_model(tmp, seed=args.seed)
        params = model.num_parameters()
    print(f"tiny Qwen3-VL ({params / 1e6:.2f}M parameters) and processor -> {args.output_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_script(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
