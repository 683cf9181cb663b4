"""Synthetic raw-layout driving clips: smooth random ego motion and a rendered ground plane."""

from __future__ import annotations

import io
import os
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from qwenvl.prepare import rawdata
from qwenvl.standins.motion import (
    FPS,
    MotionProfile,
    camera_timestamps,
    egomotion_timestamps,
    interpolate_pose,
    random_profile,
    synthesize_egomotion,
)
from qwenvl.standins.render import (
    MOUNTS,
    GroundRenderer,
    SyntheticCamera,
    encode_mp4,
    ground_texture,
)

# The vehicle's dimensions as the dataset records them (metres): a mid-size car.
VEHICLE_DIMENSIONS = {
    "length": 4.8, "width": 1.9, "height": 1.5, "rear_axle_to_bbox_center": 1.4,
    "wheelbase": 2.9, "track_width": 1.6,
}  # fmt: skip

_BOX_COLUMNS = {"timestamp": "int64", **dict.fromkeys(("x0", "y0", "x1", "y1"), "float32")}


CLOCK_OFFSET_US = 12_000  # other cameras' clocks start up to this far from the front one's


@dataclass
class SyntheticClip:
    """One generated clip: what goes into the camera and egomotion zips."""

    clip_id: str
    egomotion: pd.DataFrame
    views: dict[str, tuple[np.ndarray, bytes]]
    """Each camera's frame timestamps and mp4, the first camera's first."""

    @property
    def frame_timestamps(self) -> np.ndarray:
        return next(iter(self.views.values()))[0]

    @property
    def video(self) -> bytes:
        return next(iter(self.views.values()))[1]


def _clip_rngs(seed: int, index: int) -> list[np.random.Generator]:
    # spawn_key=(index,) is the index-th child of SeedSequence(seed): clip i is the same
    # whatever the number of clips asked for.
    clip_seed = np.random.SeedSequence(seed, spawn_key=(index,))
    return [np.random.default_rng(s) for s in clip_seed.spawn(4)]


def _camera_clock(seed: int, index: int, camera: str, clip_seconds: float) -> np.ndarray:
    """Another camera's frame timestamps: its own jitter, its clock a few ms off the front
    camera's (cameras are not frame-locked); the same for a camera whatever others are asked."""
    key = (index, 1 + list(MOUNTS).index(camera))
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))
    offset = int(rng.integers(-CLOCK_OFFSET_US, CLOCK_OFFSET_US + 1))
    return camera_timestamps(rng, clip_seconds) + offset


def make_clip(
    seed: int,
    index: int,
    clip_seconds: float = 20,
    width: int = 640,
    height: int = 360,
    profile: MotionProfile | None = None,
    cameras: tuple[str, ...] = (rawdata.DEFAULT_CAMERA,),
) -> SyntheticClip:
    """Clip `index` of the dataset drawn from `seed`: id, egomotion, and each camera's frame
    times and mp4 bytes, every camera seeing the same ground from its own mount. The front
    camera's clip is the same whichever other cameras are asked."""
    id_rng, time_rng, motion_rng, texture_rng = _clip_rngs(seed, index)
    clip_id = str(uuid.UUID(bytes=id_rng.bytes(16), version=4))
    front = camera_timestamps(time_rng, clip_seconds)
    ego_ts = egomotion_timestamps(time_rng, clip_seconds, front)
    profile = profile or random_profile(motion_rng, float(clip_seconds))
    egomotion = synthesize_egomotion(ego_ts, profile.speed, profile.curvature)
    texture = ground_texture(texture_rng)
    views = {}
    for camera in cameras:
        if camera == rawdata.DEFAULT_CAMERA:
            frames = front
        else:
            frames = _camera_clock(seed, index, camera, clip_seconds)
        renderer = GroundRenderer(width, height, texture, MOUNTS[camera])
        poses = interpolate_pose(egomotion, frames)
        video = encode_mp4((renderer.render(*pose) for pose in poses), width, height)
        views[camera] = (frames, video)
    return SyntheticClip(clip_id, egomotion, views)


def _parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


@contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto `path` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_member(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    # A fixed date keeps the zips byte-identical across runs; the payloads are compressed.
    archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)


def _calibration(
    clip_ids: list[str], cameras: tuple[str, ...], width: int, height: int
) -> dict[str, pd.DataFrame]:
    """The calibration tables as the dataset ships them: camera intrinsics and sensor
    extrinsics indexed by (clip_id, sensor), a row per clip and camera, vehicle dimensions by
    clip_id."""
    pairs = [(clip, camera) for clip in clip_ids for camera in cameras]
    sensors = pd.MultiIndex.from_tuples(pairs, names=["clip_id", "sensor"])
    rigs = [SyntheticCamera(width, height, MOUNTS[camera]) for _, camera in pairs]
    intrinsics = pd.DataFrame([rig.intrinsics() for rig in rigs], index=sensors)
    intrinsics[["width", "height"]] = intrinsics[["width", "height"]].astype(np.int64)
    return {
        "camera_intrinsics": intrinsics,
        "sensor_extrinsics": pd.DataFrame([rig.extrinsics() for rig in rigs], index=sensors),
        "vehicle_dimensions": pd.DataFrame(
            [VEHICLE_DIMENSIONS] * len(clip_ids), index=pd.Index(clip_ids, name="clip_id")
        ),
    }


# No faces or plates in a rendered ground plane: the blur boxes table is empty.
_BLURRED_BOXES = pd.DataFrame(
    {name: pd.Series(dtype=dtype) for name, dtype in _BOX_COLUMNS.items()}
)


@dataclass(frozen=True)
class _Spec:
    seed: int
    clip_seconds: float
    width: int
    height: int
    profile: MotionProfile | None
    cameras: tuple[str, ...]


def _write_chunk(
    dataset: rawdata.RawDataset, chunk: int, indices: range, spec: _Spec, bar: tqdm
) -> list[str]:
    """Write one chunk's camera zips, egomotion zip and calibration; return its clip ids."""
    root = dataset.root
    clip_ids: list[str] = []
    with ExitStack() as stack:
        zips = {
            feature: stack.enter_context(
                zipfile.ZipFile(
                    stack.enter_context(_atomic_path(root / dataset.chunk_file(feature, chunk))),
                    "w",
                )
            )
            for feature in (*spec.cameras, rawdata.EGOMOTION)
        }
        for index in indices:
            clip = make_clip(
                spec.seed, index, spec.clip_seconds, spec.width, spec.height, spec.profile,
                spec.cameras,
            )  # fmt: skip
            for camera, (timestamps, video) in clip.views.items():
                members = {
                    "video": video,
                    "frame_timestamps": _parquet_bytes(pd.DataFrame({"timestamp": timestamps})),
                    "blurred_boxes": _parquet_bytes(_BLURRED_BOXES),
                }
                for alias, data in members.items():
                    _write_member(zips[camera], dataset.member(camera, clip.clip_id, alias), data)
            ego_member = dataset.member(rawdata.EGOMOTION, clip.clip_id, rawdata.EGOMOTION)
            _write_member(zips[rawdata.EGOMOTION], ego_member, _parquet_bytes(clip.egomotion))
            clip_ids.append(clip.clip_id)
            bar.update()
    calibration = _calibration(clip_ids, spec.cameras, spec.width, spec.height)
    for kind, table in calibration.items():
        with _atomic_path(root / dataset.chunk_file(kind, chunk)) as tmp:
            table.to_parquet(tmp)
    return clip_ids


def _check_arguments(
    num_clips: int, clip_seconds: float, width: int, height: int, chunk_size: int
) -> None:
    if num_clips < 1 or chunk_size < 1:
        raise ValueError(f"num_clips ({num_clips}) and chunk_size ({chunk_size}) must be >= 1")
    if round(clip_seconds * FPS) < 2:
        raise ValueError(f"clip_seconds ({clip_seconds}) must give at least 2 frames at {FPS} fps")
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise ValueError(f"width x height ({width}x{height}) must be even and at least 16x16")


@dataclass
class SyntheticDataset:
    """What write_synthetic_dataset wrote: the clip index and every file, under `root`."""

    root: Path
    clip_index: pd.DataFrame
    files: list[Path]


def _official_splits(clip_ids: list[str], val_fraction: float, test_fraction: float, seed: int):
    """The index's `split` column: train / val / test by clip, as the real index names them."""
    from qwenvl.prepare.splits import OFFICIAL_SPLITS, split_clips

    official_name = {ours: official for official, ours in OFFICIAL_SPLITS.items()}
    assignment = split_clips(clip_ids, val_fraction, test_fraction, seed)
    return [official_name[assignment[c]] for c in clip_ids]


def _write_metadata(
    root: Path, index: pd.DataFrame, features: list[str], cameras: tuple[str, ...]
) -> list[str]:
    """The presence table (the features written here present) and the data collection table."""
    written_features = (*cameras, rawdata.EGOMOTION, *rawdata.CALIBRATION_FEATURES)
    presence = pd.DataFrame(
        {feature: feature in written_features for feature in features}, index=index.index
    )
    collection = pd.DataFrame(
        {"country": "synthetic", "hour_of_day": np.int64(12), "platform_class": "synthetic"},
        index=index.index,
    )
    written = [rawdata.FEATURE_PRESENCE[0], rawdata.DATA_COLLECTION]
    for name, table in zip(written, (presence, collection), strict=True):
        with _atomic_path(root / name) as tmp:
            table.to_parquet(tmp)
    return written


def write_synthetic_dataset(
    output_dir: str | Path,
    num_clips: int,
    clip_seconds: float = 20,
    width: int = 640,
    height: int = 360,
    seed: int = 0,
    chunk_size: int = 4,
    profile: MotionProfile | None = None,
    progress: bool = True,
    val_fraction: float = 0.125,
    test_fraction: float = 0.25,
    cameras: tuple[str, ...] = (rawdata.DEFAULT_CAMERA,),
) -> SyntheticDataset:
    """Write `num_clips` synthetic clips in the dataset's layout (see prepare/rawdata.py).

    The index carries an official-style `split` by clip (fractions and seed as given) and
    `clip_is_valid` True. `profile` drives every clip with one fixed motion; by default each
    clip draws its own random profile. Every one of `cameras` (the dataset's names, see
    render.MOUNTS) is rendered from its own mount, on its own clock, with its calibration rows.
    The same arguments give identical labels and frames.
    """
    _check_arguments(num_clips, clip_seconds, width, height, chunk_size)
    unknown = [c for c in cameras if c not in MOUNTS]
    if unknown or not cameras or len(set(cameras)) < len(cameras):
        raise ValueError(
            f"cameras {', '.join(cameras) or '(none)'}: name each once, of {', '.join(MOUNTS)}"
        )
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    features = rawdata.default_features(tuple(cameras))
    rawdata.write_features_csv(features, root / rawdata.FEATURES_CSV)
    dataset = rawdata.RawDataset(root, cameras[0])  # names files from the features.csv written
    spec = _Spec(seed, clip_seconds, width, height, profile, tuple(cameras))
    clip_ids: list[str] = []
    chunks: list[int] = []
    with tqdm(total=num_clips, desc="synthetic clips", unit="clip", disable=not progress) as bar:
        for chunk, start in enumerate(range(0, num_clips, chunk_size)):
            indices = range(start, min(start + chunk_size, num_clips))
            ids = _write_chunk(dataset, chunk, indices, spec, bar)
            clip_ids += ids
            chunks += [chunk] * len(ids)
    index = pd.DataFrame(
        {
            "chunk": np.array(chunks, dtype=np.int64),
            "split": _official_splits(clip_ids, val_fraction, test_fraction, seed),
            "clip_is_valid": np.ones(len(clip_ids), dtype=bool),
        },
        index=pd.Index(clip_ids, name="clip_id"),
    )
    files = [rawdata.FEATURES_CSV, *_write_metadata(root, index, list(features.index), cameras)]
    with _atomic_path(root / rawdata.CLIP_INDEX) as tmp:
        index.to_parquet(tmp)
    files.append(rawdata.CLIP_INDEX)
    for chunk in sorted(set(chunks)):
        files += [
            dataset.chunk_file(feature, chunk)
            for feature in (
                *cameras,
                rawdata.EGOMOTION,
                *rawdata.CALIBRATION_FEATURES,
            )
        ]
    return SyntheticDataset(root, index, [root / f for f in files])
