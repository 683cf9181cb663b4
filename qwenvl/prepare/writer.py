"""Write one source clip's segments: decode it once, write a 30-frame mp4 per segment and its
manifest row; the per-clip task that local workers and Ray nodes run."""

from __future__ import annotations

import io
import json
import queue
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from qwenvl.cli import DiskFull, disk_full
from qwenvl.files import atomic_write_text
from qwenvl.layout import CLIP_RESULTS
from qwenvl.prepare.labels import (
    SEGMENT_FRAMES,
    ClipError,
    Segment,
    SideFrames,
    make_segments,
    side_frames,
)
from qwenvl.prepare.rawdata import MissingClipData, NoCalibration, RawDataset
from qwenvl.record import segment_id
from qwenvl.task import CLIP_FPS


def output_size(width: int, height: int, max_width: int) -> tuple[int, int]:
    """Target (width, height): at most max_width wide, aspect kept, even for H.264."""
    if width > max_width:
        height = height * max_width / width
        width = max_width
    return int(round(width / 2) * 2), int(round(height / 2) * 2)


def segment_video_path(clip_id: str, index: int, camera: str | None = None) -> str:
    """A segment's mp4 path relative to the segments directory: its own camera's, or with
    `camera` that camera's view of it."""
    suffix = f".{camera}" if camera else ""
    return f"videos/{clip_id}/{segment_id(clip_id, index)}{suffix}.mp4"


class _SegmentWriter:
    """An H.264 mp4 that takes exactly `count` frames at `rate` frames per second."""

    def __init__(self, path: Path, width: int, height: int, count: int, rate: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(path), mode="w")
        # ultrafast at a low CRF: segments are training inputs, re-decoded many times, and
        # encoding them must not cost more than decoding the source (see BENCHMARKS.md).
        self.stream = self.container.add_stream(
            "libx264", rate=rate, options={"preset": "ultrafast", "crf": "18"}
        )
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
        self.stream.thread_count = 1
        self.rate, self.expected, self.count = rate, count, 0

    def add(self, frame: av.VideoFrame) -> bool:
        """Encode one frame; True once the segment is complete and closed."""
        frame.pts, frame.time_base = self.count, Fraction(1, self.rate)
        self.container.mux(self.stream.encode(frame))
        self.count += 1
        if self.count == self.expected:
            self.container.mux(self.stream.encode())
            self.container.close()
            return True
        return False


@contextmanager
def _decoded_frames(container: av.container.InputContainer) -> Iterator[Iterator[av.VideoFrame]]:
    """Frames decoded on a helper thread, so decoding overlaps resizing and encoding.

    On leaving, the helper is stopped and joined before the caller closes the container.
    """
    frames: queue.Queue = queue.Queue(maxsize=32)
    stop = threading.Event()
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"

    def produce() -> None:
        try:
            for frame in container.decode(stream):
                while not stop.is_set():
                    try:
                        frames.put(frame, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            frames.put(None)
        except Exception as err:  # noqa: BLE001 - handed to the consumer, raised there
            frames.put(err)

    def consume() -> Iterator[av.VideoFrame]:
        while (item := frames.get()) is not None:
            if isinstance(item, Exception):
                raise item
            yield item

    worker = threading.Thread(target=produce, daemon=True)
    worker.start()
    try:
        yield consume()
    finally:
        stop.set()
        while worker.is_alive():
            with suppress(queue.Empty):
                frames.get(timeout=0.1)
        worker.join()


def _encode_segments(
    video: bytes,
    plan: dict[int, np.ndarray],
    path_of: Callable[[int], Path],
    max_width: int,
    rate: float = CLIP_FPS,
) -> tuple[int, tuple[int, int]]:
    """Decode the source once, feeding each frame to the segments that hold it (`plan`:
    segment index -> its frame indices, written to path_of(index)); the frame count, and the
    (width, height) the segments were written at."""
    owners: dict[int, list[int]] = {}
    for index, frames in plan.items():
        for frame_index in frames:
            owners.setdefault(int(frame_index), []).append(index)
    writers: dict[int, _SegmentWriter] = {}
    decoded = 0
    with av.open(io.BytesIO(video)) as container:
        source = container.streams.video[0]
        width, height = output_size(source.width, source.height, max_width)
        with _decoded_frames(container) as frames:
            for frame in frames:
                for index in owners.get(decoded, []):
                    if index not in writers:
                        count = len(plan[index])
                        writers[index] = _SegmentWriter(
                            path_of(index), width, height, count, round(rate)
                        )
                    small = frame.reformat(
                        width=width, height=height, format="yuv420p", interpolation="AREA"
                    )
                    if writers[index].add(small):
                        del writers[index]
                decoded += 1
    if writers:
        raise ClipError(f"video ends after {decoded} frames, inside segment {min(writers)}")
    return decoded, (width, height)


@dataclass(frozen=True)
class Cut:
    """How clips are cut: the segments' camera and width, the further cameras (their frames of
    each segment's window, at their own width), and whether a clip lacking one of them is kept
    with fewer views."""

    max_width: int = 640
    side_max_width: int = 320
    allow_missing_cameras: bool = False


@dataclass
class _View:
    camera: str
    frames: SideFrames
    size: tuple[int, int] = (0, 0)


def _side_views(
    dataset: RawDataset, clip_id: str, chunk: int, segments: list[Segment], cut: Cut
) -> tuple[list[tuple[_View, bytes, int]], dict[str, str]]:
    """Each further camera's frames per segment, its video and its frame count; and the cameras
    the clip lacks (camera -> why) when the cut keeps such clips, else ClipError."""
    views, missing = [], {}
    for camera in dataset.side_cameras:
        why = dataset.lacks_camera(clip_id, chunk, camera)
        if why is None:
            try:
                timestamps = dataset.frame_timestamps(clip_id, chunk, camera).to_numpy()
                video = dataset.video_bytes(clip_id, chunk, camera)
            except MissingClipData as err:
                why = str(err)
        if why is not None:
            if not cut.allow_missing_cameras:
                raise ClipError(why)
            missing[camera] = why
            continue
        views.append(
            (_View(camera, side_frames(timestamps, segments, camera)), video, len(timestamps))
        )
    return views, missing


def _views_of(seg: Segment, views: list[_View], camera: str, clip_id: str) -> dict:
    """The manifest row's view fields of a segment."""
    return {
        "cameras": [camera, *(v.camera for v in views)],
        "extra_videos": [segment_video_path(clip_id, seg.index, v.camera) for v in views],
        "extra_fps": [v.frames.fps for v in views],
        "extra_frames": [len(v.frames.frames[seg.index]) for v in views],
        "extra_widths": [v.size[0] for v in views],
        "extra_heights": [v.size[1] for v in views],
    }


def process_clip(
    dataset: RawDataset, clip_id: str, chunk: int, output_dir: Path, cut: Cut = Cut()
) -> dict:
    """One clip's segments: {"rows": manifest rows, "dropped": segment id -> why,
    "calibration": its JSON (empty where the dataset has none), and "no_calibration" (why it
    has none) and "missing_cameras" (camera -> why) where they apply}; ClipError (files
    removed) when the whole clip must be skipped."""
    clip_dir = output_dir / "videos" / clip_id
    try:
        timestamps = dataset.frame_timestamps(clip_id, chunk).to_numpy()
        egomotion = dataset.egomotion(clip_id, chunk)
        video = dataset.video_bytes(clip_id, chunk)
    except MissingClipData as err:
        raise ClipError(str(err)) from None
    clip = make_segments(timestamps, egomotion)
    views, missing = _side_views(dataset, clip_id, chunk, clip.segments, cut)
    dropped = dict(clip.dropped)
    for view, _, _ in views:  # a segment that a camera has too few frames of is left out
        dropped.update({i: why for i, why in view.frames.short.items() if i not in dropped})
    segments = [seg for seg in clip.segments if seg.index not in dropped]
    if not segments:
        raise ClipError(f"no complete segment ({next(iter(dropped.values()))})")
    result = {"dropped": {segment_id(clip_id, i): why for i, why in sorted(dropped.items())}}
    try:
        result["calibration"] = json.dumps(
            dataset.calibration(clip_id, chunk), separators=(",", ":")
        )
    except NoCalibration as err:
        result["calibration"], result["no_calibration"] = "", str(err)
    if missing:
        result["missing_cameras"] = missing
    try:
        plan = {seg.index: seg.frames for seg in segments}
        decoded, size = _encode_segments(
            video, plan, lambda i: output_dir / segment_video_path(clip_id, i), cut.max_width
        )
        if decoded != len(timestamps):
            raise ClipError(f"video has {decoded} frames but {len(timestamps)} timestamps")
        for view, side_video, count in views:
            plan = {seg.index: view.frames.frames[seg.index] for seg in segments}
            decoded, view.size = _encode_segments(
                side_video,
                plan,
                lambda i, c=view.camera: output_dir / segment_video_path(clip_id, i, c),
                cut.side_max_width,
                view.frames.fps,
            )
            if decoded != count:
                raise ClipError(f"{view.camera} video has {decoded} frames but {count} timestamps")
    except (av.error.FFmpegError, ClipError, ValueError, OSError) as err:
        shutil.rmtree(clip_dir, ignore_errors=True)
        if isinstance(err, ClipError):
            raise
        # A full disk, or any other fault of the output, is not the clip's: the run stops (and
        # continues with --resume once it is mended).
        if disk_full(err):
            raise DiskFull(f"{clip_dir}: no space left on device") from None
        if not isinstance(err, av.error.FFmpegError | ValueError):
            raise
        raise ClipError(f"video cannot be decoded ({err})") from None
    side = [view for view, _, _ in views]
    result["rows"] = [
        {
            **_manifest_row(clip_id, chunk, seg, size),
            **_views_of(seg, side, dataset.camera, clip_id),
        }
        for seg in segments
    ]
    return result


def _manifest_row(clip_id: str, chunk: int, seg: Segment, size: tuple[int, int]) -> dict:
    duration_us = seg.frame_timestamps_us[-1] - seg.frame_timestamps_us[0]
    return {
        "clip_id": clip_id,
        "chunk": int(chunk),
        "segment_index": seg.index,
        "segment_start_us": int(seg.frame_timestamps_us[0]),
        "video": segment_video_path(clip_id, seg.index),
        # The segment mp4 plays at the camera's nominal 30 FPS; the processor gets this rate.
        # The measured rate (jittered timestamps) is kept for reference only, since feeding it
        # would flip Qwen3-VL's rounded "<t seconds>" stamps from one segment to the next.
        "fps": float(CLIP_FPS),
        # What the mp4 holds, so a sample's token count is known without opening it.
        "frames": SEGMENT_FRAMES,
        "width": size[0],
        "height": size[1],
        "measured_fps": float((SEGMENT_FRAMES - 1) * 1e6 / duration_us),
        "frame_timestamps_us": seg.frame_timestamps_us.astype(np.int64).tolist(),
        **seg.labels(),
    }


_datasets: dict[tuple[str, tuple[str, ...]], RawDataset] = {}


def segment_clip_task(
    root: str,
    cameras: tuple[str, ...],
    clip_id: str,
    chunk: int,
    output_dir: str,
    cut: Cut,
) -> dict:
    """Segment one clip into `output_dir` (on the first of `cameras`' timeline, the others as
    further views) and record the outcome in clips/<clip_id>.json: process_clip's result and
    "clip_id", or {"clip_id", "skipped"}. The record is written last and atomically, so its
    presence means the clip is complete (what --resume relies on). Runs in a worker process,
    local or on a Ray node; a worker keeps its open zips between clips."""
    key = (root, tuple(cameras))
    dataset = _datasets.setdefault(key, RawDataset(Path(root), cameras[0], tuple(cameras[1:])))
    out = Path(output_dir)
    try:
        result = {"clip_id": clip_id, **process_clip(dataset, clip_id, int(chunk), out, cut)}
    except ClipError as err:
        result = {"clip_id": clip_id, "skipped": str(err)}
    record = out / CLIP_RESULTS / f"{clip_id}.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(record, json.dumps(result))
    return result


def finished_clips(staging: Path) -> dict[str, dict]:
    """The clip records of an interrupted run's staging folder (clip_id -> record)."""
    records = {}
    for path in sorted((staging / CLIP_RESULTS).glob("*.json")):
        record = json.loads(path.read_text())
        records[record["clip_id"]] = record
    return records
