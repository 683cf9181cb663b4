"""What a run trains, as the launchers pass it: the parts tuned and the LoRA settings (their
defaults live here; the launchers print them), and the record of it each checkpoint keeps. Light
enough for the launchers' pre-flight to read before torch loads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from qwenvl.files import StoredSettings


@dataclass(frozen=True)
class TuneFlags:
    """Which parts of Qwen3-VL train (--tune_mm_vision / --tune_mm_mlp / --tune_mm_llm), with
    LoRA and in full alike."""

    vision: bool
    mlp: bool
    llm: bool

    def __post_init__(self) -> None:
        if not (self.vision or self.mlp or self.llm):
            raise ValueError(
                "nothing to train: set one of --tune_mm_vision/--tune_mm_mlp/--tune_mm_llm"
            )


@dataclass(frozen=True)
class LoraSettings:
    """LoRA's shape (the seed guide's defaults): rank, alpha (scale = alpha / r), dropout."""

    r: int = 64
    alpha: int = 128
    dropout: float = 0.05


# Tuning's fields -> the launchers' variables, for messages in the words the user set.
LAUNCHER_NAMES = {
    "tune_vision": "TUNE_MM_VISION",
    "tune_mlp": "TUNE_MM_MLP",
    "tune_llm": "TUNE_MM_LLM",
    "lora_r": "LORA_R",
    "lora_alpha": "LORA_ALPHA",
    "lora_dropout": "LORA_DROPOUT",
    "quantization": "QUANT",
}


@dataclass(frozen=True)
class Tuning(StoredSettings):
    """How a checkpoint was trained, stored with it as tuning.json: a run resumed into its
    folder must train the same way, and a QLoRA adapter loads its base quantized as trained.
    The LoRA fields are None for full fine-tuning."""

    FILE: ClassVar[str] = "tuning.json"
    tune_vision: bool
    tune_mlp: bool
    tune_llm: bool
    lora_r: int | None = None
    lora_alpha: int | None = None
    lora_dropout: float | None = None
    quantization: str | None = None

    @classmethod
    def of_run(cls, flags: TuneFlags, lora: LoraSettings | None, quantization: str | None):
        return cls(
            flags.vision,
            flags.mlp,
            flags.llm,
            *((lora.r, lora.alpha, lora.dropout) if lora else (None, None, None)),
            quantization or None,
        )

    @classmethod
    def of_launcher(cls, env: dict, kind: str) -> Tuning:
        """The tuning the launcher's settings ask for (`kind`: lora or full)."""

        def on(name: str) -> bool:
            return env.get(name, "") in ("1", "true", "True", "yes")

        flags = TuneFlags(on("TUNE_MM_VISION"), on("TUNE_MM_MLP"), on("TUNE_MM_LLM"))
        lora = None
        if kind == "lora":
            lora = LoraSettings(
                int(env["LORA_R"]), int(env["LORA_ALPHA"]), float(env["LORA_DROPOUT"])
            )
        return cls.of_run(flags, lora, env.get("QUANT") if kind == "lora" else None)

    def differences(self, now: Tuning) -> str:
        """What `now` changes, in the launchers' words (empty when nothing does)."""
        if (self.lora_r is None) != (now.lora_r is None):
            was, will = ("LoRA", "full fine-tuning") if now.lora_r is None else ("full", "LoRA")
            return f"{was} fine-tuning (now {will})" if was == "LoRA" else f"{was} (now {will})"
        changed = []
        for name, variable in LAUNCHER_NAMES.items():
            before, after = getattr(self, name), getattr(now, name)
            if before != after:
                changed.append(f"{variable}={_shown(before)} (now {_shown(after)})")
        return ", ".join(changed)


def _shown(value) -> str:
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
