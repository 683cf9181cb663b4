"""Segments and their labels against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from qwenvl.prepare.labels import (
    ClipError,
    MotionInterpolator,
    ego_history,
    history_times,
    make_segments,
    segment_starts,
    yaw_from_quaternion,
)
from qwenvl.standins.motion import MotionProfile, constant_profile
from qwenvl.standins.synthetic import make_clip


def _segments(profile, seconds=4, seed=0):
    clip = make_clip(seed, 0, clip_seconds=seconds, width=64, height=48, profile=profile)
    result = make_segments(clip.frame_timestamps, clip.egomotion)
    assert result.dropped == {}
    return clip, result.segments


def _by_hand(ego, t):
    """(speed, curvature) at times t as the labels define them, computed without the devkit:
    heading and anchor-frame velocity interpolated linearly (a yaw-only slerp is linear in
    yaw), the velocity projected on the heading; curvature interpolated linearly."""
    ts = ego["timestamp"]
    yaw = np.unwrap(yaw_from_quaternion(ego[["qx", "qy", "qz", "qw"]].to_numpy()))
    heading = np.interp(t, ts, yaw)
    vx, vy = np.interp(t, ts, ego["vx"]), np.interp(t, ts, ego["vy"])
    speed = vx * np.cos(heading) + vy * np.sin(heading)
    return speed, np.interp(t, ts, ego["curvature"])


# The velocity vector turns between egomotion rows (10 ms apart) and is interpolated along the
# chord, so a constant speed reads up to ~1e-6 m/s low: far below the answer's 0.1 m/s.
CHORD_ATOL = 1e-5


def test_constant_motion_gives_those_values_in_every_pair():
    _, segments = _segments(constant_profile(10.0, 0.01))
    assert len(segments) == 3
    for seg in segments:
        np.testing.assert_allclose(seg.future[:, 0], 10.0, atol=CHORD_ATOL)
        np.testing.assert_allclose(seg.future[:, 1], 0.01, atol=1e-12)
        np.testing.assert_allclose(seg.observed, seg.future, atol=CHORD_ATOL)


@pytest.mark.parametrize("curvature, sign", [(0.02, 1), (-0.03, -1)])
def test_turn_direction_is_the_curvature_sign(curvature, sign):
    clip, segments = _segments(constant_profile(8.0, curvature))
    assert all(np.all(np.sign(seg.future[:, 1]) == sign) for seg in segments)
    # A left turn (positive curvature) moves the car to +y, the left, in the anchor frame.
    assert np.sign(clip.egomotion["y"].iloc[-1]) == sign


def test_reversing_gives_negative_speed():
    profile = MotionProfile(
        speed=lambda t: np.where(np.asarray(t) < 2.5, 5.0, -2.0),
        curvature=lambda t: np.full(np.shape(t), 0.01),
    )
    _, segments = _segments(profile, seconds=5)
    np.testing.assert_allclose(segments[2].future[:, 0], -2.0, atol=CHORD_ATOL)  # reversing
    np.testing.assert_allclose(segments[0].future[:, 0], 5.0, atol=CHORD_ATOL)


def test_labels_are_egomotion_interpolated_at_the_next_second_frames():
    clip, segments = _segments(None, seconds=8, seed=5)
    t = clip.frame_timestamps
    for seg in segments:
        speed, curvature = _by_hand(clip.egomotion, t[seg.frames[0] + 30 : seg.frames[0] + 60])
        np.testing.assert_allclose(seg.future[:, 0], speed, atol=1e-9)
        np.testing.assert_allclose(seg.future[:, 1], curvature, atol=1e-12)
        observed_speed, _ = _by_hand(clip.egomotion, t[seg.frames])
        np.testing.assert_allclose(seg.observed[:, 0], observed_speed, atol=1e-9)


def test_real_timing_negative_first_frame_and_sparse_tail_gives_19_segments():
    clip, segments = _segments(None, seconds=20, seed=11)
    t, ego = clip.frame_timestamps, clip.egomotion
    assert len(t) == 605 and t[0] < 0 and ego["timestamp"].iloc[-1] > 32_000_000
    assert [seg.index for seg in segments] == list(range(19))
    assert segments[0].frames[0] == 0  # -14 ms is the frame nearest to 0 s
    for seg in segments:
        speed, curvature = _by_hand(ego, t[seg.frames[0] + 30 : seg.frames[0] + 60])
        np.testing.assert_allclose(seg.future[:, 0], speed, atol=1e-9)
        np.testing.assert_allclose(seg.future[:, 1], curvature, atol=1e-12)


def test_a_segment_whose_next_second_lacks_egomotion_is_dropped_alone():
    clip = make_clip(3, 0, clip_seconds=5, width=64, height=48)
    t = clip.frame_timestamps
    # Egomotion ending inside segment 3's next second (frames 120-149 are 3.99-4.98 s).
    ego = clip.egomotion[clip.egomotion["timestamp"] < t[135]]
    result = make_segments(t, ego)
    assert [seg.index for seg in result.segments] == [0, 1, 2]
    assert list(result.dropped) == [3] and "outside the egomotion range" in result.dropped[3]


def test_jittered_timestamps_pick_the_frame_nearest_each_second():
    rng = np.random.default_rng(1)
    t = (np.arange(150) * 1e6 / 30 + rng.uniform(-12_000, 12_000, 150)).astype(np.int64)
    t[0] = 0
    t = np.maximum.accumulate(t + np.arange(150))  # strictly increasing
    starts = segment_starts(t)
    assert len(starts) == 4
    for s, start in enumerate(starts):
        assert start == int(np.argmin(np.abs(t - s * 1_000_000)))
    # With this jitter a strict [s, s+1) window would not always hold 30 frames.
    counts = [int(((t >= s * 1e6) & (t < (s + 1) * 1e6)).sum()) for s in range(4)]
    assert any(c != 30 for c in counts)


def test_segments_use_the_30_frames_after_the_window():
    clip, segments = _segments(None, seconds=5, seed=2)
    for seg in segments:
        start = int(np.argmin(np.abs(clip.frame_timestamps - seg.index * 1_000_000)))
        assert seg.frames.tolist() == list(range(start, start + 30))
        np.testing.assert_array_equal(
            seg.frame_timestamps_us, clip.frame_timestamps[start : start + 30]
        )


def test_bad_timestamps_raise_clip_errors():
    clip = make_clip(0, 0, clip_seconds=3, width=64, height=48)
    t = clip.frame_timestamps.astype(np.float64)
    with pytest.raises(ClipError, match="NaN"):
        make_segments(np.where(np.arange(len(t)) == 7, np.nan, t), clip.egomotion)
    with pytest.raises(ClipError, match="not strictly increasing"):
        make_segments(t[::-1], clip.egomotion)
    with pytest.raises(ClipError, match="shorter than 2 s"):
        make_segments(t[:50], clip.egomotion)


def test_ego_history_is_the_past_at_its_rate_oldest_first_up_to_the_last_frame():
    # Constant acceleration and constant curvature: speed 4 + 2t m/s, curvature 0.02 1/m.
    profile = MotionProfile(
        speed=lambda t: 4.0 + 2.0 * np.asarray(t, dtype=np.float64),
        curvature=lambda t: np.full(np.shape(t), 0.02),
    )
    clip, segments = _segments(profile, seconds=5)
    motion = MotionInterpolator(clip.egomotion)
    seg = segments[2]
    last = int(seg.frame_timestamps_us[-1])
    times = history_times(last, 1.0, 10.0)
    assert times.tolist() == [last - k * 100_000 for k in range(9, -1, -1)]  # oldest first
    history = ego_history(motion, last, 1.0, 10.0)
    # The last point takes the last egomotion row at or before the frame (none after it).
    rows = clip.egomotion["timestamp"].to_numpy()
    used = np.minimum(times, rows[rows <= last][-1]) / 1e6
    np.testing.assert_allclose(history[:, 0], 4.0 + 2.0 * used, atol=CHORD_ATOL)
    np.testing.assert_allclose(history[:, 1], 0.02, atol=1e-12)
    # 2 s at 5 Hz reach into the segment before; segment 0 has no 2 s of egomotion behind it.
    assert ego_history(motion, last, 2.0, 5.0).shape == (10, 2)
    first = int(segments[0].frame_timestamps_us[-1])
    with pytest.raises(ValueError, match="no 2 s of egomotion before the segment's last frame"):
        ego_history(motion, first, 2.0, 10.0)


def test_egomotion_after_the_last_frame_changes_the_labels_never_the_history():
    clip, segments = _segments(None, seconds=6, seed=8)
    seg = segments[2]
    last = int(seg.frame_timestamps_us[-1])
    changed = clip.egomotion.copy()
    later = changed["timestamp"] > last
    changed.loc[later, ["vx", "vy"]] *= 3.0
    changed.loc[later, "curvature"] += 0.05
    before = ego_history(MotionInterpolator(clip.egomotion), last, 1.0, 10.0)
    after = ego_history(MotionInterpolator(changed), last, 1.0, 10.0)
    np.testing.assert_array_equal(before, after)  # the prompt sees nothing after the frame
    relabelled = make_segments(clip.frame_timestamps, changed).segments[2]
    assert not np.allclose(relabelled.future, seg.future)  # while the labels do change
