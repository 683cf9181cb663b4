#!/usr/bin/env python
"""Merge a LoRA adapter into its base model: a standalone model with the processor, video
settings, answer format and prompt it was trained with, ready for `from_pretrained`.

The merge runs in fp32 (on the GPU when there is one, --device to choose) and is saved in the
base model's dtype unless --save-dtype says otherwise. merge_report.json says how much of the
fine-tune the saved weights keep: the share of the update that survives rounding to that dtype
and, with --check-json, how far the merged model's logits on a few clips are from the
adapter's, against how far the fine-tune moved them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qwenvl.cli import UserError, add_inference_arguments, run_script
from qwenvl.files import atomic_output_dir, check_apart, check_output_dir, writable_parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--adapter-path", required=True, help="LoRA output directory (or a checkpoint-* in it)"
    )
    add_inference_arguments(parser, dtype=False)
    parser.add_argument(
        "--save-dtype",
        choices=["base", "bf16", "fp16", "fp32"],
        default="base",
        help="dtype of the saved weights: the base model's (default), or bf16, fp16, fp32; "
        "merge_report.json says what each keeps of the fine-tune",
    )
    parser.add_argument(
        "--check-json",
        help="a training-format JSON (test.json, say) whose first clips check the merged "
        "model's logits against the adapter's",
    )
    parser.add_argument(
        "--check-samples", type=int, default=4, help="clips of --check-json (default: 4)"
    )
    parser.add_argument("--output-dir", required=True, help="where the merged model goes")
    parser.add_argument(
        "--overwrite-output", action="store_true", help="replace an existing output directory"
    )
    args = parser.parse_args(argv)
    if args.check_samples < 1:
        parser.error("--check-samples must be positive")
    return args


def check_samples(args: argparse.Namespace) -> list[dict]:
    if not args.check_json:
        return []
    from qwenvl.data.samples import load_samples

    try:
        return list(load_samples([args.check_json])[: args.check_samples])
    except ValueError as err:
        raise UserError(f"--check-json: {str(err).splitlines()[0]}") from None


def run(args: argparse.Namespace) -> int:
    from qwenvl.inference.spec import read_spec

    adapter = Path(args.adapter_path)
    if not (adapter / "adapter_config.json").is_file():
        raise UserError(f"{adapter}: no adapter_config.json (not a LoRA adapter directory)")
    try:
        spec = read_spec(str(adapter), args.base_model)
    except ValueError as err:
        raise UserError(str(err)) from None
    check_apart(args.output_dir, {"--adapter-path": adapter, **spec.local_inputs()})
    check_output_dir(args.output_dir, args.overwrite_output)
    writable_parent(args.output_dir)
    samples = check_samples(args)
    merged, report = merge(args, spec, samples)
    from qwenvl.checkpoint import InferenceFiles
    from qwenvl.inference.merging import write_report

    with atomic_output_dir(args.output_dir, args.overwrite_output) as tmp:
        merged.save_pretrained(tmp)
        InferenceFiles(merged.processor, spec.video, spec.answer_format, spec.prompt).save(tmp)
        write_report(report, tmp)
    print(f"merged {adapter} into {spec.base} -> {args.output_dir} ({report['saved_dtype']})")
    print(summary(report))
    return 0


def merge(args: argparse.Namespace, spec, samples: list[dict]):
    """(the merged model in the saved dtype, with its processor as .processor; the report)."""
    import torch

    from qwenvl.inference import merging
    from qwenvl.inference.opener import open_for_script

    args.dtype, args.backend = "fp32", "transformers"
    # The adapter on its full-precision base, in fp32: the merge adds in fp32.
    backend = open_for_script(args, spec, quantized=False)
    print(f"{spec.path}: {backend.describe()}; merging in fp32")
    if spec.tuning is not None and spec.tuning.quantization:
        print(
            f"note: {spec.path} is a QLoRA adapter, trained on its base loaded in "
            f"{spec.tuning.quantization}; it is merged into the base's original full-precision "
            "weights, not the 4-bit ones it trained on, so the merged model's answers can "
            "differ slightly from those of the adapter on its 4-bit base"
        )
    name = merging.base_dtype(spec.base) if args.save_dtype == "base" else args.save_dtype
    dtype = merging.SAVE_DTYPES[name]
    model, processor = backend.model, backend.processor
    kept = merging.update_kept(model, dtype)
    encoded = merging.encoded_samples(samples, processor, spec.video) if samples else []
    if encoded:
        adapter_logits = merging.answer_logits(model, encoded)
        with model.disable_adapter():
            base_logits = merging.answer_logits(model, encoded)
    merged = model.merge_and_unload().to(dtype)
    logits = None
    if encoded:
        merged_logits = merging.answer_logits(merged, encoded)
        logits = merging.compare_logits(adapter_logits, base_logits, merged_logits)
    merged.processor = processor
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return merged, merging.merge_report(kept, name, logits)


def summary(report: dict) -> str:
    """The report in a few plain lines."""
    lines = [
        f"the saved {report['saved_dtype']} weights keep {100 * report['update_kept_share']:.1f}% "
        f"of the update over {report['weights_compared']} trained weights"
    ]
    logits = report["logits"]
    if logits is not None:
        lines.append(
            f"on {logits['positions']} answer positions, the merged model's logits differ from "
            f"the adapter's by {100 * logits['share_of_the_fine_tune']:.1f}% of what the "
            "fine-tune changed in them"
        )
    else:
        lines.append("pass --check-json test.json to compare the merged model's logits too")
    lines.append(report["advice"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return run_script(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
