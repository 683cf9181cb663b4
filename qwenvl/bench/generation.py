"""generate: answer tokens per second of evaluation, through the inference interface, for each
backend asked (transformers, vLLM, or both on the same clips in one run): batched answers free
and constrained to the answer grammar. For the transformers backend also: generate() batched
against one clip at a time, the static KV cache against the dynamic one, each attention kernel
this machine runs, and (on CUDA) the decoding step compiled or not (--compile)."""

from __future__ import annotations

from pathlib import Path

from qwenvl.bench.common import best_time
from qwenvl.cli import BACKENDS


def requests_of(train_json: Path, spec, batch: int) -> list:
    """`batch` clips of the training file as requests, decoded at the model's video settings."""
    from qwenvl.chat import human_of
    from qwenvl.data.samples import load_samples
    from qwenvl.inference.backend import Request
    from qwenvl.inference.clips import views_of

    samples = load_samples([str(train_json)])[:batch]
    return [Request(views_of(s, spec.video), human_of(s)) for s in samples]


def answer_rates(backend, requests: list, repeats: int) -> dict:
    """Batched answers' tokens/s, free and constrained, counting each answer's tokens."""
    result = {}
    for mode in ("constrained", "free"):
        counted = []

        def run(mode=mode, counted=counted):
            answers = backend.answer(requests, constrained=mode == "constrained")
            counted[:] = [a.answer_tokens for a in answers]

        run()  # warm-up: compiles the grammar, fills caches (and on CUDA compiles with --compile)
        seconds = best_time(run, repeats)
        result[f"{mode}_tokens_per_s"] = sum(counted) / seconds
        result[f"{mode}_tokens_per_answer"] = sum(counted) / len(counted)
    result["constrained_over_free_tokens_per_s"] = (
        result["constrained_tokens_per_s"] / result["free_tokens_per_s"]
    )
    return result


def bench_generate(
    model_path: str,
    train_json: Path,
    repeats: int,
    device: str | None,
    batch: int = 8,
    backend: str = "transformers",
    compile: bool = False,
) -> dict:
    """answer_rates per backend on the same clips (and the transformers backend's details)."""
    from qwenvl.inference.opener import open_backend
    from qwenvl.inference.spec import read_spec

    spec = read_spec(model_path)
    requests = requests_of(train_json, spec, batch)
    names = list(BACKENDS) if backend == "both" else [backend]
    results = {"batch_size": len(requests), "compile": compile}
    for name in names:
        opened = open_backend(name, spec, device=device, compile=compile)
        row = {"describe": opened.describe(), **answer_rates(opened, requests, repeats)}
        if name == "transformers":
            row.update(transformers_details(opened, requests, repeats))
        opened.close()
        results[name] = row
    if len(names) == 2:
        results["vllm_over_transformers_constrained_tokens_per_s"] = (
            results["vllm"]["constrained_tokens_per_s"]
            / results["transformers"]["constrained_tokens_per_s"]
        )
    return results


def transformers_details(backend, requests: list, repeats: int) -> dict:
    """generate() on ready inputs, batched against one clip at a time, every clip made to answer
    the full budget (so both ways do the same work); then the caches and attention kernels."""
    import torch

    from qwenvl.inference.transformers_backend import answer_token_budget

    model = backend.model
    new = answer_token_budget(backend.processor.tokenizer, backend.spec.answer_format)
    kwargs = {
        "max_new_tokens": new,
        "min_new_tokens": new,
        "do_sample": False,
        "cache_implementation": "static",
        "disable_compile": not backend.compile,
    }
    batched_inputs = backend.inputs(requests)
    single_inputs = [backend.inputs([r]) for r in requests]
    with torch.inference_mode():
        model.generate(**single_inputs[0], max_new_tokens=2, cache_implementation="static")
        batched = best_time(lambda: model.generate(**batched_inputs, **kwargs), repeats)
        single = best_time(lambda: [model.generate(**i, **kwargs) for i in single_inputs], repeats)
    tokens = len(requests) * new
    return {
        "new_tokens_per_sample": new,
        "generate_batched_tokens_per_s": tokens / batched,
        "generate_one_at_a_time_tokens_per_s": tokens / single,
        "generate_speedup": single / batched,
        "constrained_generation": cache_and_attention(backend, batched_inputs, repeats),
    }


def decode_rate(backend, inputs: dict, repeats: int, cache: str) -> float:
    """Constrained tokens/s of one batched generate() on ready inputs, counting each answer's
    tokens up to its <|im_end|>; `cache` is "static" or "dynamic" (transformers' default)."""
    import torch
    from xgrammar.contrib.hf import LogitsProcessor

    from qwenvl.inference.transformers_backend import answer_token_budget

    tokenizer = backend.processor.tokenizer
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    budget = answer_token_budget(tokenizer, backend.spec.answer_format, constrained=True)
    prompt = inputs["input_ids"].shape[1]
    counted = []
    extra = {"cache_implementation": "static"} if cache == "static" else {}

    def run():
        out = backend.model.generate(
            **inputs,
            max_new_tokens=budget,
            do_sample=False,
            logits_processor=[LogitsProcessor(backend.grammar)],
            disable_compile=not backend.compile,
            **extra,
        )[:, prompt:]
        stops = out == stop
        ends = torch.where(stops.any(dim=1), stops.int().argmax(dim=1) + 1, out.shape[1])
        counted[:] = ends.tolist()

    with torch.inference_mode():
        run()  # warm-up: with --compile on CUDA, the static cache compiles here
        seconds = best_time(run, repeats)
    return sum(counted) / seconds


def cache_and_attention(backend, inputs: dict, repeats: int) -> list[dict]:
    """Constrained tokens/s for each KV cache (static, as evaluation uses it, and dynamic) and
    each attention kernel this machine runs for the model's dtype (attention_choice, as loading
    chooses): flash-attn slices the whole cache every step, so which is faster is a GPU
    measurement."""
    from qwenvl.inference.transformers_backend import TransformersBackend
    from qwenvl.model import attention_choice, load_model

    model = backend.model
    kernels = ["sdpa"]
    if attention_choice(model.device, model.dtype)[0] == "flash_attention_2":
        kernels.append("flash_attention_2")
    rows = []
    for kernel in kernels:
        variant = TransformersBackend(
            load_model(backend.spec.path, kernel, device=model.device, dtype=model.dtype),
            backend.processor,
            backend.spec,
            compile=backend.compile,
        )
        for cache in ("static", "dynamic"):
            rate = decode_rate(variant, inputs, repeats, cache)
            rows.append({"attention": kernel, "cache": cache, "constrained_tokens_per_s": rate})
        variant = None
    return rows
