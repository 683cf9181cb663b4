"""prep: seconds per 20 s source clip, ours (decode once, every segment written from the one
pass) against reopening and seeking the source per segment with OpenCV at full resolution, and
the pure decode time as the floor."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

from qwenvl.bench.common import best_time


def decode_floor(video: bytes) -> None:
    """Decode every frame once and touch nothing else: the least segmenting can cost."""
    import av

    with av.open(io.BytesIO(video)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for _ in container.decode(stream):
            pass


def bench_prep(work: Path, repeats: int, resolutions: str) -> dict:
    from qwenvl.bench.reference import per_segment_reference
    from qwenvl.prepare.labels import segment_starts
    from qwenvl.prepare.rawdata import RawDataset
    from qwenvl.prepare.writer import Cut, process_clip
    from qwenvl.standins.synthetic import write_synthetic_dataset

    results = {}
    for size in resolutions.split(","):
        width, height = (int(v) for v in size.split("x"))
        root = work / f"raw_{size}"
        if not root.exists():
            write_synthetic_dataset(root, 1, clip_seconds=20, width=width, height=height, seed=0)
        dataset = RawDataset(root)
        clip_id, chunk = dataset.clip_index.index[0], int(dataset.clip_index["chunk"].iloc[0])
        video = dataset.video_bytes(clip_id, chunk)
        source = work / f"source_{size}.mp4"
        source.write_bytes(video)
        starts = segment_starts(dataset.frame_timestamps(clip_id, chunk).to_numpy())

        def ours(dataset=dataset, clip_id=clip_id, chunk=chunk):
            with tempfile.TemporaryDirectory(dir=work) as out:
                process_clip(dataset, clip_id, chunk, Path(out), Cut(max_width=640))

        def reference(source=source, starts=starts):
            with tempfile.TemporaryDirectory(dir=work) as out:
                per_segment_reference(source, starts, Path(out))

        row = {
            "ours_s_per_clip": best_time(ours, repeats),
            "decode_floor_s_per_clip": best_time(lambda v=video: decode_floor(v), repeats),
            "per_segment_reference_s_per_clip": best_time(reference, max(1, repeats - 1)),
        }
        row["ours_over_floor"] = row["ours_s_per_clip"] / row["decode_floor_s_per_clip"]
        row["speedup_vs_reference"] = (
            row["per_segment_reference_s_per_clip"] / row["ours_s_per_clip"]
        )
        results[size] = row
    return results
