"""Read the PhysicalAI-AV raw layout: chunk zips as downloaded, or their extracted contents."""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pandas as pd

DEFAULT_CAMERA = "camera_front_wide_120fov"
HF_REPO_ID = "nvidia/PhysicalAI-Autonomous-Vehicles"
CLIP_INDEX = "metadata/clip_index.parquet"


def chunk_name(chunk: int) -> str:
    return f"chunk_{int(chunk):04d}"


def camera_zip(camera: str, chunk: int) -> str:
    """Dataset-relative path of one chunk's camera zip."""
    return f"camera/{camera}/{camera}.{chunk_name(chunk)}.zip"


def egomotion_zip(chunk: int) -> str:
    """Dataset-relative path of one chunk's egomotion zip."""
    return f"labels/egomotion/egomotion.{chunk_name(chunk)}.zip"


def video_member(clip_id: str, camera: str) -> str:
    return f"{clip_id}.{camera}.mp4"


def timestamps_member(clip_id: str, camera: str) -> str:
    return f"{clip_id}.{camera}.timestamps.parquet"


def egomotion_member(clip_id: str) -> str:
    return f"{clip_id}.egomotion.parquet"


class MissingClipData(FileNotFoundError):
    """A file a clip needs is in neither the chunk zip nor an extracted folder."""


@dataclass
class RawDataset:
    """One downloaded (or synthetic) dataset root with the layout of the Hugging Face dataset."""

    root: Path
    camera: str = DEFAULT_CAMERA

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self._zips: dict[Path, zipfile.ZipFile | None] = {}

    @cached_property
    def clip_index(self) -> pd.DataFrame:
        """clip_id -> chunk, sorted by chunk then clip_id."""
        path = self.root / CLIP_INDEX
        if not path.is_file():
            raise FileNotFoundError(f"{path}: clip index not found (is this a dataset root?)")
        index = pd.read_parquet(path, columns=["clip_id", "chunk"])
        return index.sort_values(["chunk", "clip_id"], ignore_index=True)

    def _read_member(self, zip_relpath: str, member: str) -> bytes:
        zip_path = self.root / zip_relpath
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

    def video_bytes(self, clip_id: str, chunk: int) -> bytes:
        return self._read_member(camera_zip(self.camera, chunk), video_member(clip_id, self.camera))

    def frame_timestamps(self, clip_id: str, chunk: int) -> pd.Series:
        """Camera frame timestamps (int64 us from clip start), one per frame."""
        data = self._read_member(
            camera_zip(self.camera, chunk), timestamps_member(clip_id, self.camera)
        )
        return pd.read_parquet(io.BytesIO(data))["timestamp"]

    def egomotion(self, clip_id: str, chunk: int) -> pd.DataFrame:
        data = self._read_member(egomotion_zip(chunk), egomotion_member(clip_id))
        return pd.read_parquet(io.BytesIO(data))

    def close(self) -> None:
        for archive in self._zips.values():
            if archive is not None:
                archive.close()
        self._zips.clear()
