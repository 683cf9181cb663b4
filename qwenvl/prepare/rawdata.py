"""Read the PhysicalAI-AV dataset as NVIDIA ships it: the root clip index, features.csv's file
and member templates, and the chunk zips as downloaded (or their extracted contents).

The layout follows NVIDIA's devkit (`physical_ai_av` on PyPI), whose `Features` class turns
features.csv into file names, and whose readers give the tables' columns.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
from physical_ai_av.dataset import Features

DEFAULT_CAMERA = "camera_front_wide_120fov"
EGOMOTION = "egomotion"
CALIBRATION_FEATURES = ("camera_intrinsics", "sensor_extrinsics", "vehicle_dimensions")
HF_REPO_ID = "nvidia/PhysicalAI-Autonomous-Vehicles"
CLIP_INDEX = "clip_index.parquet"
FEATURES_CSV = "features.csv"
# The devkit reads feature_presence.parquet, and sensor_presence.parquet in revisions before 26.03.
FEATURE_PRESENCE = ("metadata/feature_presence.parquet", "metadata/sensor_presence.parquet")
DATA_COLLECTION = "metadata/data_collection.parquet"
SPLITS_DIR = "splits"
# The calibration columns a clip's overlay needs: its camera's f-theta intrinsics (the devkit's
# CameraIntrinsics.from_intrinsics_df reads these) and the camera's pose on the rig.
INTRINSICS = (
    "width",
    "height",
    "cx",
    "cy",
    *(f"{p}_poly_{i}" for p in ("fw", "bw") for i in range(5)),
)
POSE = ("qx", "qy", "qz", "qw", "x", "y", "z")
# The columns of a clip's egomotion table (labels/egomotion), as the devkit reads them: pose
# and velocity in the anchor frame (x forward, y left, z up), curvature signed (+ = left).
EGOMOTION_COLUMNS: dict[str, str] = {
    "timestamp": "int64",
    "qx": "float64",
    "qy": "float64",
    "qz": "float64",
    "qw": "float64",
    "x": "float64",
    "y": "float64",
    "z": "float64",
    "vx": "float64",
    "vy": "float64",
    "vz": "float64",
    "ax": "float64",
    "ay": "float64",
    "az": "float64",
    "curvature": "float64",
}


def default_features(cameras: tuple[str, ...] = (DEFAULT_CAMERA,)) -> pd.DataFrame:
    """features.csv's table with the dataset's documented names, for a copy without the file."""
    rows = {}
    for camera in cameras:
        rows[camera] = (
            "camera",
            f"camera/{camera}/{camera}.chunk_{{chunk_id:04d}}.zip",
            {
                "video": f"{{clip_id}}.{camera}.mp4",
                "frame_timestamps": f"{{clip_id}}.{camera}.timestamps.parquet",
                "blurred_boxes": f"{{clip_id}}.{camera}.blurred_boxes.parquet",
            },
        )
    rows[EGOMOTION] = (
        "labels",
        "labels/egomotion/egomotion.chunk_{chunk_id:04d}.zip",
        {"egomotion": "{clip_id}.egomotion.parquet"},
    )
    for kind in CALIBRATION_FEATURES:
        path = f"calibration/{kind}/{kind}.chunk_{{chunk_id:04d}}.parquet"
        rows[kind] = ("calibration", path, None)
    table = pd.DataFrame.from_dict(
        rows, orient="index", columns=["directory", "chunk_path", "clip_files_in_zip"]
    )
    table.index.name = "feature"
    return table


def write_features_csv(table: pd.DataFrame, path: Path) -> None:
    """features.csv as the dataset stores it: member templates as JSON text."""
    out = table.copy()
    out["clip_files_in_zip"] = out["clip_files_in_zip"].map(json.dumps, na_action="ignore")
    out.to_csv(path)


def read_features_csv(path: Path) -> pd.DataFrame:
    table = pd.read_csv(path, index_col="feature")
    missing = {"directory", "chunk_path", "clip_files_in_zip"} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    table["clip_files_in_zip"] = table["clip_files_in_zip"].map(json.loads, na_action="ignore")
    return table


def read_by_clip(path: Path) -> pd.DataFrame:
    """A parquet table of the dataset indexed by clip_id (string): the dataset stores clip_id
    as the index; a clip_id column is accepted too."""
    table = pd.read_parquet(path)
    if "clip_id" in table.columns:
        table = table.set_index("clip_id")
    table.index = table.index.astype(str)
    table.index.name = "clip_id"
    return table


def read_clip_index(path: Path) -> pd.DataFrame:
    """The clip index, indexed by clip_id (the dataset stores it as the index; a clip_id column
    is accepted too), with an int `chunk` column and `split` / `clip_is_valid` where present."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: clip index not found (is this the dataset root?)")
    index = read_by_clip(path)
    if "chunk" not in index.columns:
        raise ValueError(f"{path}: no 'chunk' column")
    index["chunk"] = index["chunk"].astype("int64")
    return index


def read_split_labels(root: Path, split_name: str) -> pd.Series:
    """clip_id -> official split from splits/<split_name>.parquet."""
    path = root / SPLITS_DIR / f"{split_name}.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split file not found")
    return read_by_clip(path)["split"].astype(str)


class NoCalibration(ValueError):
    """A clip without a usable camera calibration; str() says why (it still trains)."""


class MissingClipData(FileNotFoundError):
    """A file a clip needs is in neither the chunk zip nor an extracted folder."""


@dataclass
class ClipSelection:
    """The index clips a run processes, and how many of the rest were left out and why."""

    clips: pd.DataFrame  # indexed by clip_id: chunk, split (None where the index has none)
    not_downloaded: int  # index clips whose chunk files are not here
    invalid: list[str]  # clip_is_valid == False
    unavailable: dict[str, str] = field(default_factory=dict)  # clip_id -> reason (presence)


@dataclass
class RawDataset:
    """One local copy of the dataset (the downloaded chunks, or synthetic data in that layout)."""

    root: Path
    camera: str = DEFAULT_CAMERA
    """The segments' camera: their timeline, labels and overlay are this camera's."""
    side_cameras: tuple[str, ...] = ()
    """Cameras whose frames of each segment's window join it as further views."""

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.side_cameras = tuple(c for c in self.side_cameras if c != self.camera)
        self._zips: dict[Path, zipfile.ZipFile | None] = {}
        self._calibration: dict[tuple[str, int], pd.DataFrame | NoCalibration] = {}

    @cached_property
    def features(self) -> Features:
        """File and member templates: features.csv when present, the documented names else."""
        path = self.root / FEATURES_CSV
        cameras = (self.camera, *self.side_cameras)
        table = read_features_csv(path) if path.is_file() else default_features(cameras)
        features = Features(table)
        for needed in (*cameras, EGOMOTION):
            if needed not in features.ALL:
                cameras = sorted(table.index[table["directory"] == "camera"])
                raise ValueError(f"{path}: no feature '{needed}' (cameras: {', '.join(cameras)})")
        return features

    @cached_property
    def clip_index(self) -> pd.DataFrame:
        """The whole index, sorted by chunk then clip_id."""
        return (
            read_clip_index(self.root / CLIP_INDEX).sort_index().sort_values("chunk", kind="stable")
        )

    @cached_property
    def feature_presence(self) -> pd.DataFrame | None:
        """clip_id -> one bool column per feature, where the metadata holds the table."""
        for name in FEATURE_PRESENCE:
            path = self.root / name
            if path.is_file():
                return read_by_clip(path).select_dtypes(include=bool)
        return None

    def chunk_file(self, feature: str, chunk: int) -> str:
        """Dataset-relative path of one chunk's file of a feature, from features.csv."""
        return self.features.get_chunk_feature_filename(int(chunk), feature)

    def member(self, feature: str, clip_id: str, alias: str) -> str:
        """Name of a clip's file inside a chunk zip (alias: video, frame_timestamps, ...)."""
        return self.features.get_clip_files_in_zip(clip_id, feature)[alias]

    def has_chunk(self, feature: str, chunk: int) -> bool:
        """The chunk's zip of `feature` is here, or a folder it was extracted into."""
        zip_path = self.root / self.chunk_file(feature, chunk)
        return zip_path.is_file() or zip_path.with_suffix("").is_dir()

    def _chunk_here(self, chunk: int, first_clip: str) -> bool:
        for feature, alias in ((self.camera, "video"), (EGOMOTION, EGOMOTION)):
            beside = self.root / Path(self.chunk_file(feature, chunk)).parent
            extracted_beside = (beside / self.member(feature, first_clip, alias)).is_file()
            if not (self.has_chunk(feature, chunk) or extracted_beside):
                return False
        return True

    def select_clips(self, split_labels: pd.Series | None = None) -> ClipSelection:
        """The clips to process: chunks present here, valid, with camera and egomotion."""
        index = self.clip_index
        present = {
            chunk
            for chunk, clips in index.groupby("chunk", sort=True)
            if self._chunk_here(int(chunk), str(clips.index[0]))
        }
        here = index[index["chunk"].isin(present)]
        valid = here["clip_is_valid"].astype(bool) if "clip_is_valid" in here else None
        invalid = [] if valid is None else here.index[~valid].tolist()
        clips = here if valid is None else here[valid]
        split = split_labels if split_labels is not None else clips.get("split")
        clips = pd.DataFrame(
            {
                "chunk": clips["chunk"],
                "split": None if split is None else split.reindex(clips.index),
            }
        )
        unavailable = self._unavailable(clips.index)
        clips = clips.drop(index=list(unavailable))
        return ClipSelection(clips, len(index) - len(here), invalid, unavailable)

    def _unavailable(self, clip_ids: pd.Index) -> dict[str, str]:
        """clip_id -> why, for clips the presence table says lack the camera or egomotion (a
        side camera's absence is the segmenting step's to judge: qwenvl.prepare.writer)."""
        presence = self.feature_presence
        if presence is None:
            return {}
        reasons = {}
        for feature in (self.camera, EGOMOTION):
            if feature in presence.columns:
                has = presence[feature].reindex(clip_ids, fill_value=True).astype(bool)
                for clip_id in has.index[~has]:
                    reasons.setdefault(clip_id, f"no {feature} for this clip (feature_presence)")
        return reasons

    def _read_member(self, feature: str, chunk: int, member: str) -> bytes:
        zip_path = self.root / self.chunk_file(feature, chunk)
        # Extracted contents may sit beside the zip or in a folder named after it.
        for candidate in (zip_path.parent / member, zip_path.with_suffix("") / member):
            if candidate.is_file():
                return candidate.read_bytes()
        archive = self._open_zip(zip_path)
        if archive is not None:
            try:
                return archive.read(member)
            except KeyError:
                pass
        raise MissingClipData(f"{member} not found in {zip_path} or its extracted folder")

    def _open_zip(self, path: Path) -> zipfile.ZipFile | None:
        if path not in self._zips:
            self._zips[path] = zipfile.ZipFile(path) if path.is_file() else None
        return self._zips[path]

    def video_bytes(self, clip_id: str, chunk: int, camera: str | None = None) -> bytes:
        camera = camera or self.camera
        return self._read_member(camera, chunk, self.member(camera, clip_id, "video"))

    def frame_timestamps(self, clip_id: str, chunk: int, camera: str | None = None) -> pd.Series:
        """A camera's frame timestamps (int64 µs on the clip clock), one per frame; each camera
        has its own (cameras are not frame-locked)."""
        camera = camera or self.camera
        member = self.member(camera, clip_id, "frame_timestamps")
        return pd.read_parquet(io.BytesIO(self._read_member(camera, chunk, member)))["timestamp"]

    def lacks_camera(self, clip_id: str, chunk: int, camera: str) -> str | None:
        """Why a clip has no `camera` (not in the presence table, its chunk not downloaded), or
        None when it may have it."""
        presence = self.feature_presence
        if presence is not None and camera in presence.columns:
            if clip_id in presence.index and not bool(presence.at[clip_id, camera]):
                return f"no {camera} for this clip (feature_presence)"
        zip_path = self.root / self.chunk_file(camera, chunk)
        beside = zip_path.parent / self.member(camera, clip_id, "video")
        if not (self.has_chunk(camera, chunk) or beside.is_file()):
            return f"{camera} not downloaded (no {zip_path.name})"
        return None

    def egomotion(self, clip_id: str, chunk: int) -> pd.DataFrame:
        member = self.member(EGOMOTION, clip_id, EGOMOTION)
        return pd.read_parquet(io.BytesIO(self._read_member(EGOMOTION, chunk, member)))

    def _calibration_table(self, kind: str, chunk: int) -> pd.DataFrame:
        """A chunk's calibration table of one kind (read once); NoCalibration says why there
        is none (not in features.csv, not downloaded, unreadable)."""
        key = (kind, chunk)
        if key not in self._calibration:
            try:
                self._calibration[key] = self._read_calibration(kind, chunk)
            except NoCalibration as err:
                self._calibration[key] = err
        found = self._calibration[key]
        if isinstance(found, NoCalibration):
            raise found
        return found

    def _read_calibration(self, kind: str, chunk: int) -> pd.DataFrame:
        if kind not in self.features.ALL:
            raise NoCalibration(f"features.csv lists no {kind}")
        try:
            path = self.root / self.chunk_file(kind, chunk)
        except (KeyError, ValueError) as err:
            raise NoCalibration(f"features.csv has no file template for {kind} ({err})") from None
        if not path.is_file():
            raise NoCalibration(f"{kind} not downloaded (no {path.name})")
        try:
            return pd.read_parquet(path)
        except (OSError, ValueError) as err:
            raise NoCalibration(
                f"{path.name} cannot be read ({str(err).splitlines()[0]})"
            ) from None

    def calibration(self, clip_id: str, chunk: int) -> dict:
        """This camera's calibration of a clip as the dataset ships it: its f-theta intrinsics
        row (at the video's own size), its pose on the rig (sensor_extrinsics) and the
        vehicle's width where given. NoCalibration says why the clip has none (the overlay
        needs it; segments and labels do not)."""
        found = {}
        for kind, columns in (("camera_intrinsics", INTRINSICS), ("sensor_extrinsics", POSE)):
            table = self._calibration_table(kind, chunk)
            try:
                row = table.loc[(clip_id, self.camera)]
            except (KeyError, TypeError, ValueError):
                raise NoCalibration(f"{kind} has no row for this clip's {self.camera}") from None
            if isinstance(row, pd.DataFrame):
                row = row.iloc[0]
            missing = [c for c in columns if c not in row.index]
            if missing:
                raise NoCalibration(f"{kind} lacks the columns {', '.join(missing)}")
            values = {c: pd.to_numeric(row[c], errors="coerce") for c in columns}
            if not all(np.isfinite(float(v)) for v in values.values()):
                raise NoCalibration(f"{kind} holds NaN or non-numbers")
            found[kind] = {c: float(v) for c, v in values.items()}
        result = {"camera": self.camera, **found}
        try:
            dimensions = self._calibration_table("vehicle_dimensions", chunk)
            width = float(dimensions.loc[clip_id, "width"])
            if np.isfinite(width):
                result["vehicle_width"] = width
        except (NoCalibration, KeyError, TypeError, ValueError):
            pass  # the overlay draws the path without the vehicle's band
        return result

    def close(self) -> None:
        for archive in self._zips.values():
            if archive is not None:
                archive.close()
        self._zips.clear()
