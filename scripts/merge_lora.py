#!/usr/bin/env python
"""Merge a LoRA adapter into its base model: a standalone model with the processor, video
settings, answer format and prompt it was trained with, ready for `from_pretrained`. Merges on
the GPU when there is one (--device to choose).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from qwenvl.checkpoint import InferenceFiles
from qwenvl.cli import UserError, add_inference_arguments, run_script
from qwenvl.files import atomic_output_dir, check_apart, check_output_dir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--adapter-path", required=True, help="LoRA output directory (or a checkpoint-* in it)"
    )
    add_inference_arguments(parser)
    parser.add_argument("--output-dir", required=True, help="where the merged model goes")
    parser.add_argument(
        "--overwrite-output", action="store_true", help="replace an existing output directory"
    )
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    adapter = Path(args.adapter_path)
    if not (adapter / "adapter_config.json").is_file():
        raise UserError(f"{adapter}: no adapter_config.json (not a LoRA adapter directory)")
    base = (
        args.base_model
        or json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    )
    check_apart(args.output_dir, {"--adapter-path": adapter, "its base model": base})
    check_output_dir(args.output_dir, args.overwrite_output)
    from qwenvl.inference.load import load_for_script
    from qwenvl.train.settings import Tuning

    args.base_model = base
    loaded = load_for_script(args, str(adapter), quantized=False)
    print(f"{adapter}: {loaded.describe()}")
    tuning = Tuning.load(adapter)
    if tuning is not None and tuning.quantization:
        print(
            f"note: {adapter} is a QLoRA adapter, trained on a {tuning.quantization} base; it is "
            "merged into the bf16 base (dequantized), so the merged model's answers can differ "
            "slightly from those of the adapter on its 4-bit base"
        )
    merged = loaded.model.merge_and_unload()
    with atomic_output_dir(args.output_dir, args.overwrite_output) as tmp:
        merged.save_pretrained(tmp)
        files = InferenceFiles(
            loaded.processor, loaded.settings, loaded.answer_format, loaded.prompt
        )
        files.save(tmp)
    print(f"merged {adapter} into {base} -> {args.output_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_script(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
