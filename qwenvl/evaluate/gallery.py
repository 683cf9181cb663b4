"""The evaluation's gallery: the best, median and worst clips by ADE (overall, and per bucket
when asked), each segment's last frame with the true and predicted paths drawn through its
camera calibration; and the same clips for several models side by side."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from qwenvl.evaluate import overlay
from qwenvl.metrics import speed_bucket, turn_bucket
from qwenvl.trajectory import displacement_errors, integrate_unicycle

GALLERY = "gallery"  # folder of an evaluation's images; gallery.json lists them
RANKS = ("best", "median", "worst")


def clip_errors(record: dict) -> tuple[float, float]:
    """(ADE, FDE) in metres of one parsed prediction record."""
    pred, true = np.asarray(record["pairs"]), np.asarray(record["true_pairs"])
    return displacement_errors(integrate_unicycle(*pred.T), integrate_unicycle(*true.T))


def chosen(records: list[dict], buckets: bool = False) -> list[dict]:
    """The gallery's picks among the parsed records: [{"group", "rank", "id", "ade_m",
    "fde_m"}], the best, median and worst by ADE of all of them, then of each speed and turn
    bucket of the truth with `buckets`."""
    parsed = [r for r in records if r["pairs"] is not None]
    errors = {r["id"]: clip_errors(r) for r in parsed}
    groups = {"all": parsed}
    if buckets:
        for bucket_of in (speed_bucket, turn_bucket):
            for r in parsed:
                groups.setdefault(bucket_of(np.asarray(r["true_pairs"])), []).append(r)
    picks = []
    for group, members in groups.items():
        ranked = sorted(members, key=lambda r: errors[r["id"]][0])
        if not ranked:
            continue
        positions = {"best": 0, "median": (len(ranked) - 1) // 2, "worst": len(ranked) - 1}
        for rank in RANKS:
            found = ranked[positions[rank]]
            if rank != "best" and positions[rank] == 0:
                continue  # one clip only: drawn once
            ade, fde = errors[found["id"]]
            picks.append(
                {"group": group, "rank": rank, "id": found["id"], "ade_m": ade, "fde_m": fde}
            )
    return picks


class Views:
    """Each clip's CameraView (or why it has none), found once per clip from the calibration
    stored beside its segments, or from the one given."""

    def __init__(self) -> None:
        self.calibrations = overlay.Calibrations()
        self._views: dict[str, overlay.CameraView | str] = {}

    def of(self, video: str, clip_id: str, width: int, height: int, calibration: str | None = None):
        key = f"{clip_id}@{width}x{height}"
        if key not in self._views:
            try:
                if calibration is None:
                    calibration = self.calibrations.of(video, clip_id)
                self._views[key] = overlay.camera_view(calibration, width, height)
            except overlay.NoOverlay as err:
                self._views[key] = str(err)
        return self._views[key]

    def missing(self, records: list[dict]) -> dict[str, str]:
        """clip id -> why it gets no overlay, over every clip the records are of (read from the
        calibration alone, at the calibration's own size)."""
        why = {}
        for r in records:
            clip_id = r["clip_id"]
            if clip_id not in why:
                found = self.of(r["video"], clip_id, 0, 0)
                why[clip_id] = found if isinstance(found, str) else ""
        return {clip: reason for clip, reason in why.items() if reason}


def draw_clip(
    views: Views,
    video: str,
    clip_id: str,
    paths: list[tuple],
    caption: str,
    calibration: str | None = None,
):
    """A clip's last frame with `paths` (name, pairs, colour) drawn, or plain with the reason
    in the caption where the clip has no overlay; (the image, that reason or None)."""
    frame = overlay.last_frame(video)
    height, width = frame.shape[:2]
    view = views.of(video, clip_id, width, height, calibration)
    if isinstance(view, str):
        return overlay.draw_paths(frame, None, [], f"{caption}; no overlay: {view}"), view
    return overlay.draw_paths(frame, view, paths, caption), None


def draw_record(views: Views, record: dict, paths: list[tuple], caption: str):
    """A prediction record's last frame, drawn as draw_clip draws it."""
    return draw_clip(views, record["video"], record["clip_id"], paths, caption)[0]


def write_gallery(records: list[dict], output_dir: Path, buckets: bool = False) -> dict:
    """Draw the picks into output_dir/gallery/ and list them in gallery.json: {"clips": picks
    with their image, "without_overlay": clips of the test set with no overlay and why}."""
    views = Views()
    by_id = {r["id"]: r for r in records}
    folder = output_dir / GALLERY
    folder.mkdir(parents=True, exist_ok=True)
    picks = chosen(records, buckets)
    for pick in picks:
        found = by_id[pick["id"]]
        name = f"{pick['group']}_{pick['rank']}.png"
        caption = (
            f"{pick['rank']} of {pick['group']}: {pick['id']}  ADE {pick['ade_m']:.2f} m  "
            f"FDE {pick['fde_m']:.2f} m"
        )
        image = draw_record(
            views,
            found,
            [
                ("true", found["true_pairs"], overlay.TRUE_COLOUR),
                ("predicted", found["pairs"], overlay.PREDICTED_COLOUR),
            ],
            caption,
        )
        image.save(folder / name)
        pick["image"] = f"{GALLERY}/{name}"
    summary = {"clips": picks, "without_overlay": views.missing(records)}
    (output_dir / "gallery.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def gallery_markdown(summary: dict) -> list[str]:
    """The report's gallery section."""
    parts = [
        "\n## Gallery\n",
        "The last observed frame of each clip, with the next second's path on the ground: true "
        "in green, predicted in magenta, a dot every 0.1 s, lines either side for the "
        "vehicle's width.\n",
    ]
    missing = summary["without_overlay"]
    if missing:
        reasons = sorted(set(missing.values()))
        parts.append(
            f"{len(missing)} clips of the test set have no overlay ({'; '.join(reasons)}); "
            "they are drawn plain.\n"
        )
    for pick in summary["clips"]:
        parts.append(
            f"**{pick['group']}, {pick['rank']}**: `{pick['id']}`, ADE {pick['ade_m']:.2f} m\n\n"
            f"![{pick['group']} {pick['rank']}]({pick['image']})\n"
        )
    return parts


def side_by_side(
    evaluations: dict[str, tuple[dict, list[dict]]], output_dir: Path, folder: str
) -> list[str]:
    """The first evaluation's gallery clips, for every model, one image per clip with the
    models side by side (each frame: the truth and that model's path); markdown lines for them.
    `evaluations`: name -> (gallery summary, prediction records)."""
    from PIL import Image

    views = Views()
    first_summary = next(iter(evaluations.values()))[0]
    records_by_name = {n: {r["id"]: r for r in recs} for n, (_, recs) in evaluations.items()}
    (output_dir / folder).mkdir(parents=True, exist_ok=True)
    lines = [f"\n## Gallery: the same clips for {', '.join(evaluations)}\n"]
    seen = set()
    for pick in first_summary["clips"]:
        if pick["id"] in seen:
            continue
        seen.add(pick["id"])
        tiles = []
        for name, by_id in records_by_name.items():
            found = by_id.get(pick["id"])
            if found is None:
                continue
            if found["pairs"] is None:
                caption, paths = f"{name}: answer not parsed", []
            else:
                ade, _ = clip_errors(found)
                caption = f"{name}: ADE {ade:.2f} m"
                paths = [("predicted", found["pairs"], overlay.PREDICTED_COLOUR)]
            paths = [("true", found["true_pairs"], overlay.TRUE_COLOUR), *paths]
            tiles.append(draw_record(views, found, paths, caption))
        width = sum(t.width for t in tiles)
        sheet = Image.new("RGB", (width, max(t.height for t in tiles)))
        left = 0
        for tile in tiles:
            sheet.paste(tile, (left, 0))
            left += tile.width
        image = f"{folder}/{pick['group']}_{pick['rank']}.png"
        sheet.save(output_dir / image)
        title = f"**{pick['group']}, {pick['rank']}** (`{pick['id']}`)"
        lines.append(f"{title}\n\n![{pick['id']}]({image})\n")
    return lines
