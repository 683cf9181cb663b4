"""The naive ways the benchmarks measure ours against, kept apart with their extra dependencies
(the bench extra: OpenCV, qwen-vl-utils and the decord it reads videos with): segmenting by
reopening and seeking the source per segment, loading samples through qwen-vl-utils, and the
dataset steps and training start-up a row at a time into Python objects."""

from __future__ import annotations

import json
import os
from pathlib import Path


def per_segment_reference(source: Path, starts: list[int], out_dir: Path) -> None:
    """The common public way: reopen and seek the source for every segment, write full-size mp4v."""
    import cv2

    for index, start in enumerate(starts):
        capture = cv2.VideoCapture(str(source))
        capture.set(cv2.CAP_PROP_POS_FRAMES, start)
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        writer = cv2.VideoWriter(
            str(out_dir / f"seg{index:02d}.mp4"),
            cv2.VideoWriter_fourcc(*"mp4v"),
            30,
            (width, height),
        )
        for _ in range(30):
            ok, frame = capture.read()
            if not ok:
                break
            writer.write(frame)
        writer.release()
        capture.release()


def qwen_vl_utils_samples(samples, processor, settings) -> None:
    """Samples through qwen-vl-utils and the processor, as its own examples load them."""
    from qwen_vl_utils import process_vision_info

    from qwenvl.chat import model_messages

    for sample in samples:
        messages = model_messages(
            sample["conversations"][0]["value"].replace("<video>\n", ""),
            sample["conversations"][1]["value"],
        )
        messages[0]["content"][0] = {
            "type": "video",
            "video": sample["video"],
            "fps": 30,
            "min_pixels": settings.min_pixels,
            "max_pixels": settings.max_pixels,
        }
        text = processor.apply_chat_template(messages, tokenize=False)
        _, videos, kwargs = process_vision_info(
            messages, return_video_kwargs=True, return_video_metadata=True, image_patch_size=16
        )
        videos, metadata = zip(*videos, strict=True)
        processor(
            text=[text],
            videos=list(videos),
            video_metadata=list(metadata),
            return_tensors="pt",
            do_resize=False,
            **kwargs,
        )


def _python_answer(future_speed, future_curvature) -> str:
    """An answer the way before: round() and format each value in Python."""

    def written(value: float, decimals: int, digits: int) -> str:
        widest = round(10**digits - 10.0**-decimals, decimals)
        return f"{min(max(round(float(value), decimals), -widest), widest) + 0.0:.{decimals}f}"

    pairs = zip(future_speed, future_curvature, strict=True)
    return "[" + ", ".join(f"({written(v, 1, 2)}, {written(c, 3, 1)})" for v, c in pairs) + "]"


def reference_row(row, video: str) -> dict:
    """A dataset row the way before: a Python dict per manifest row, built field by field."""
    from qwenvl.chat import INSTRUCTION

    answer = _python_answer(row["future_speed"], row["future_curvature"])
    labels = ("future_speed", "future_curvature", "observed_speed", "observed_curvature")
    return {
        "id": f"{row['clip_id']}_seg{int(row['segment_index']):02d}",
        "clip_id": row["clip_id"],
        "segment_index": int(row["segment_index"]),
        "video": video,
        "fps": float(row["fps"]),
        "frames": int(row["frames"]),
        "width": int(row["width"]),
        "height": int(row["height"]),
        # One camera: no further views.
        **{name: [] for name in ("cameras", "extra_videos", "extra_fps", "extra_frames")},
        **{name: [] for name in ("extra_widths", "extra_heights")},
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "video", "video": video, "fps": float(row["fps"]), "text": None},
                    {"type": "text", "text": INSTRUCTION, "video": None, "fps": None},
                ],
            },
            {
                "role": "assistant",
                "content": [{"type": "text", "text": answer, "video": None, "fps": None}],
            },
        ],
        "answer": answer,
        **{name: [float(v) for v in row[name]] for name in labels},
        "history_speed": [],
        "history_curvature": [],
    }


def reference_dataset(segments_dir: Path, output_dir: Path) -> None:
    """The DatasetDict the way before: every manifest row a Python dict, then from_list."""
    import datasets
    import pandas as pd
    from datasets import Dataset, DatasetDict

    from qwenvl.prepare.splits import OFFICIAL_SPLITS, SPLITS

    manifest = pd.read_parquet(segments_dir / "manifest.parquet")
    rows = {name: [] for name in SPLITS}
    for _, row in manifest.iterrows():
        video = str((segments_dir / row["video"]).resolve())
        rows[OFFICIAL_SPLITS[row["split"]]].append(reference_row(row, video))
    # The history and view columns are empty lists here (no --ego-history, one camera): typed
    # as ours are.
    floats = datasets.List(datasets.Value("float64"))
    kinds = {
        "history_speed": floats, "history_curvature": floats, "extra_fps": floats,
        "cameras": datasets.List(datasets.Value("string")),
        "extra_videos": datasets.List(datasets.Value("string")),
        **dict.fromkeys(
            ("extra_frames", "extra_widths", "extra_heights"),
            datasets.List(datasets.Value("int64")),
        ),
    }  # fmt: skip

    def table(r):
        found = Dataset.from_list(r)
        for name, kind in kinds.items():
            found = found.cast_column(name, kind)
        return found

    DatasetDict({name: table(r) for name, r in rows.items() if r}).save_to_disk(str(output_dir))


def reference_convert(input_dir: Path, output_dir: Path) -> None:
    """The training JSON the way before: every row a Python dict, the list dumped at once."""
    from datasets import load_from_disk

    from qwenvl.data import SPLIT_FILES

    dataset = load_from_disk(str(input_dir))
    output_dir.mkdir(parents=True)
    for split, filename in SPLIT_FILES.items():
        samples = []
        for row in dataset[split] if split in dataset else []:
            user = row["messages"][0]["content"][1]["text"]
            samples.append(
                {
                    "id": row["id"],
                    "video": os.path.relpath(row["video"], output_dir.resolve()),
                    **{k: row[k] for k in ("fps", "frames", "width", "height", "cameras")},
                    **{k: row[k] for k in ("extra_videos", "extra_fps", "extra_frames")},
                    **{k: row[k] for k in ("extra_widths", "extra_heights")},
                    "conversations": [
                        {"from": "human", "value": f"<video>\n{user}"},
                        {"from": "gpt", "value": row["answer"]},
                    ],
                    **{k: row[k] for k in ("clip_id", "segment_index", "future_speed")},
                    **{k: row[k] for k in ("future_curvature", "observed_speed")},
                    "observed_curvature": row["observed_curvature"],
                    "history_speed": row["history_speed"],
                    "history_curvature": row["history_curvature"],
                }
            )
        (output_dir / filename).write_text(json.dumps(samples, indent=1) + "\n")


class ReferenceDataset:
    """The training start-up the way before: the JSON parsed whole into dicts, every video
    opened for its frame count, every sample's text tokenised."""

    def __init__(self, train_json: str, processor, settings, max_length: int) -> None:
        from qwenvl.data.dataset import SupervisedDataset, TokenCounter, probe_video

        self.inner = SupervisedDataset.__new__(SupervisedDataset)
        self.inner.processor, self.inner.settings, self.inner.max_length = (
            processor,
            settings,
            max_length,
        )
        tokenizer = processor.tokenizer
        self.inner.header_ids = tokenizer("<|im_start|>assistant\n").input_ids
        self.inner.im_end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.inner.counter = counter = TokenCounter(processor, settings)
        folder = Path(train_json).parent
        samples = json.loads(Path(train_json).read_text())
        self.samples = []
        for sample in samples:
            sample["video"] = str(folder / sample["video"])
            layout = probe_video(sample["video"])
            visual = counter.visual(layout.frames, layout.height, layout.width, sample["fps"])
            if visual + counter.text(sample) <= max_length:
                self.samples.append(sample)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        return self.inner.encode(self.samples[index])
