"""Opening a backend by name (qwenvl.cli.BACKENDS): the one place that knows every backend of
the interface in qwenvl.inference.backend, so the interface itself imports none of them."""

from __future__ import annotations

from qwenvl.cli import BACKENDS, UserError
from qwenvl.inference.backend import Backend
from qwenvl.inference.spec import ModelSpec


def open_backend(
    name: str,
    spec: ModelSpec,
    device: str | None = None,
    dtype: str = "auto",
    compile: bool = False,
    **options,
) -> Backend:
    """The `name` backend with the spec's model loaded; ValueError or OSError where it cannot."""
    if name == "transformers":
        from qwenvl.inference.transformers_backend import TransformersBackend

        return TransformersBackend.load(
            spec, device=device, dtype=dtype, compile=compile, **options
        )
    if name == "vllm":
        from qwenvl.inference.vllm_backend import VllmBackend

        return VllmBackend.load(spec, device=device, dtype=dtype, **options)
    raise ValueError(f"unknown backend {name!r} (known: {', '.join(BACKENDS)})")


def open_for_script(args, spec: ModelSpec, **options) -> Backend:
    """open_backend for a script's --backend, --device, --dtype and --compile: a device that is
    not there or a model that cannot load is one line."""
    from qwenvl.model import resolve_device

    name = getattr(args, "backend", "transformers")
    if name == "vllm":
        if getattr(args, "compile", False):
            raise UserError("--compile is for the transformers backend (vLLM compiles itself)")
        options = {
            "tensor_parallel_size": args.tensor_parallel_size,
            "max_batch": getattr(args, "batch_size", 8),
            "merged_dir": args.vllm_merged_dir,
            **options,
        }
    else:
        try:
            resolve_device(args.device)
        except ValueError as err:
            raise UserError(f"--device: {err}") from None
    try:
        return open_backend(
            name,
            spec,
            device=args.device,
            dtype=getattr(args, "dtype", "auto"),
            compile=getattr(args, "compile", False),
            **options,
        )
    except (OSError, ValueError) as err:
        raise UserError(f"{spec.path}: cannot load ({str(err).splitlines()[0]})") from None
