"""Driving maths of the evaluation against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from qwenvl.evaluate.baselines import accel_and_curvature_rate, baseline_predictions
from qwenvl.evaluate.predictions import prediction_record
from qwenvl.evaluate.report import score
from qwenvl.metrics import error_metrics, speed_bucket, turn_bucket
from qwenvl.trajectory import displacement_errors, integrate_unicycle


def test_straight_ten_metres_per_second_covers_ten_metres():
    xy = integrate_unicycle(np.full(30, 10.0), np.zeros(30))
    np.testing.assert_allclose(xy[-1], [10.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(xy[:, 0], np.arange(1, 31) / 3, atol=1e-12)


@pytest.mark.parametrize("curvature", [0.02, -0.05])
def test_constant_speed_and_curvature_follow_the_arc(curvature):
    v = 12.0
    xy = integrate_unicycle(np.full(30, v), np.full(30, curvature))
    t = np.arange(1, 31) / 30
    radius, heading = 1 / curvature, v * curvature * t
    # Arc of radius 1/k from the origin, heading 0; positive curvature bends left (+y).
    np.testing.assert_allclose(xy[:, 0], radius * np.sin(heading), atol=2e-3)
    np.testing.assert_allclose(xy[:, 1], radius * (1 - np.cos(heading)), atol=2e-3)
    assert np.sign(xy[-1, 1]) == np.sign(curvature)


def test_a_speed_and_curvature_ramp_follows_the_continuous_path_within_a_centimetre():
    """The trapezoid rule on heading and velocity, against the same motion integrated on a grid
    2000 times finer (speed and curvature linear between the 1/30 s samples, the first pair also
    at t = 0): within 1 cm over 1 s. Taking each step's heading at its end instead is 19 cm off;
    constant motion cannot tell the two apart."""
    t = np.arange(1, 31) / 30
    speed, curvature = 5 + 12 * t, 0.2 - 0.3 * t  # 5 -> 17 m/s; 0.2 -> -0.1 1/m (left, right)
    knots = np.concatenate([[0.0], t])
    fine = np.linspace(0.0, 1.0, 30 * 2000 + 1)
    v = np.interp(fine, knots, np.concatenate([speed[:1], speed]))
    k = np.interp(fine, knots, np.concatenate([curvature[:1], curvature]))
    step = fine[1] - fine[0]

    def integral(rate):
        return np.concatenate([[0.0], np.cumsum(0.5 * step * (rate[1:] + rate[:-1]))])

    heading = integral(v * k)
    reference = np.stack([integral(v * np.cos(heading)), integral(v * np.sin(heading))], -1)
    path = integrate_unicycle(speed, curvature)
    np.testing.assert_allclose(path, reference[2000::2000], rtol=0, atol=0.01)
    assert path[-1, 1] > 1.0  # it turned left first


def test_reversing_moves_backwards():
    xy = integrate_unicycle(np.full(30, -2.0), np.zeros(30))
    np.testing.assert_allclose(xy[-1], [-2.0, 0.0], atol=1e-12)


def test_ade_fde_of_identical_and_offset_trajectories():
    true = integrate_unicycle(np.full(30, 8.0), np.full(30, 0.01))
    assert displacement_errors(true, true) == (0.0, 0.0)
    ade, fde = displacement_errors(true + np.array([0.3, -0.4]), true)
    assert ade == pytest.approx(0.5) and fde == pytest.approx(0.5)


def test_a_speed_offset_grows_linearly_along_the_second():
    true = np.stack([np.full(30, 10.0), np.zeros(30)], -1)[None]
    pred = np.stack([np.full(30, 11.0), np.zeros(30)], -1)[None]
    metrics = error_metrics(pred, true)
    assert metrics["speed_mae"] == pytest.approx(1.0) and metrics["speed_rmse"] == pytest.approx(
        1.0
    )
    assert metrics["fde_m"] == pytest.approx(1.0)  # 1 m/s for 1 s
    assert metrics["ade_m"] == pytest.approx(np.mean(np.arange(1, 31) / 30))
    assert metrics["curvature_mae"] == 0.0


def test_buckets_follow_the_true_motion():
    assert speed_bucket(np.array([[0.1, 0.0]] * 30)) == "stopped"
    assert speed_bucket(np.array([[5.0, 0.0]] * 30)) == "slow"
    assert speed_bucket(np.array([[15.0, 0.0]] * 30)) == "fast"
    assert turn_bucket(np.array([[5.0, 0.02]] * 30)) == "left"
    assert turn_bucket(np.array([[5.0, -0.02]] * 30)) == "right"
    assert turn_bucket(np.array([[5.0, 0.001]] * 30)) == "straight"


def test_baselines_from_the_observed_second():
    observed = np.stack([np.linspace(5, 8, 30), np.full(30, 0.02)], -1)[None]
    train = np.stack([np.full((2, 30), 4.0), np.zeros((2, 30))], -1)
    baselines = baseline_predictions(observed, train)
    np.testing.assert_allclose(baselines["hold_last"][0], [[8.0, 0.02]] * 30)
    np.testing.assert_allclose(baselines["constant_speed_straight"][0], [[8.0, 0.0]] * 30)
    np.testing.assert_allclose(baselines["train_mean"][0], [[4.0, 0.0]] * 30)


def _sample(i: int, speed: float) -> dict:
    return {
        "id": f"s{i}",
        "video": "v.mp4",
        "future_speed": [speed] * 30,
        "future_curvature": [0.0] * 30,
        "observed_speed": [speed] * 30,
        "observed_curvature": [0.0] * 30,
    }


def test_parse_failures_are_counted_and_excluded_not_defaulted():
    good = "[" + ", ".join(["(10.0, 0.000)"] * 30) + "]"
    records = [
        prediction_record(_sample(0, 10.0), good),
        prediction_record(_sample(1, 10.0), "[" + ", ".join(["(10.0, 0.000)"] * 29) + "]"),
        prediction_record(_sample(2, 3.0), "I think about " + good),
        prediction_record(_sample(3, 20.0), ""),
    ]
    assert [r["parse_error"] for r in records] == [
        None,
        "29 pairs, expected 30",
        "text around the list",
        "empty answer",
    ]
    metrics = score(records, None)
    assert metrics["parse"] == {
        "total": 4,
        "parsed": 1,
        "rate": 0.25,
        "failures": {"29 pairs, expected 30": 1, "text around the list": 1, "empty answer": 1},
    }
    assert metrics["model"]["all"]["n"] == 1 and metrics["model"]["all"]["ade_m"] == 0.0
    assert metrics["baselines"]["hold_last"]["all"]["n"] == 4


def test_the_kinematic_baseline_carries_the_last_half_second_on():
    t = np.arange(-29, 1) / 30  # the observed frames, the last at 0
    ahead = np.arange(1, 31) / 30
    # Constant acceleration and curvature rate: the next second is their line, exactly.
    observed = np.stack([6.0 + 1.5 * t, 0.01 - 0.02 * t], axis=-1)[None]
    predicted = accel_and_curvature_rate(observed)[0]
    np.testing.assert_allclose(predicted[:, 0], 6.0 + 1.5 * ahead, atol=1e-12)
    np.testing.assert_allclose(predicted[:, 1], 0.01 - 0.02 * ahead, atol=1e-12)
    # Only the last half second counts: a change of trend before it is not extrapolated.
    bent = np.stack([np.where(t < -0.5, 0.0, 6.0 + 1.5 * t), np.zeros(30)], axis=-1)[None]
    np.testing.assert_allclose(accel_and_curvature_rate(bent)[0, :, 0], 6.0 + 1.5 * ahead)
    # Braking to a stop: the speed stops at zero, it does not turn into reversing; and a car
    # reversing that slows down stops too, without driving forward.
    braking = np.stack([0.5 - 3.0 * t, np.zeros(30)], axis=-1)[None]
    speed = accel_and_curvature_rate(braking)[0, :, 0]
    np.testing.assert_allclose(speed, np.maximum(0.5 - 3.0 * ahead, 0.0), atol=1e-12)
    assert speed.min() == 0.0 and speed[:4].min() > 0
    reversing = np.stack([-0.5 + 3.0 * t, np.zeros(30)], axis=-1)[None]
    assert accel_and_curvature_rate(reversing)[0, :, 0].max() == 0.0
