"""The names of the files the pipeline's folders hold, one meaning each, for every stage that
writes or reads them."""

from __future__ import annotations

# A segments folder (prepare_video_segments.py).
MANIFEST = "manifest.parquet"  # one row per segment: ids, video layout, timestamps, labels
# The manifest is read a row group at a time (prepare_huggingface_dataset.py): groups this
# size keep that memory small whatever the number of segments.
MANIFEST_ROW_GROUP = 8192
CALIBRATION = "calibration.parquet"  # each clip's camera calibration, one row per clip
RAW_SOURCE = "source.json"  # the dataset root and camera the segments were cut from
CLIP_RESULTS = "clips"  # in a run's staging folder: one JSON per clip finished

# A dataset folder (prepare_huggingface_dataset.py).
SEGMENTS_SOURCE = "segments.json"  # the segments folder the dataset was built from
OLD_SEGMENTS_SOURCE = "source.json"  # its name in datasets built before it had its own
