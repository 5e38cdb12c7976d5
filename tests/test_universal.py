"""Universal approximation: the constructed net's error falls as O(1/N), the fitted one learns, bad input is 4xx."""

from __future__ import annotations

import numpy as np
import pytest
from test_api import run_job, start_job, wait_for

from convlens.errors import BadInput
from convlens.events import Points, Result
from convlens.testing import metric, of_type
from convlens_plugins.training.universal import parse_points

FINE = np.linspace(-1.0, 1.0, 100_001)
"""The grid the true max error is taken on here, 25 times finer than the method's own."""
SIZES = (8, 16, 32, 64)
KINK = "-1,1.3; 0.3,0; 1,0.7"
"""A drawn |x - 0.3|: Lipschitz with L = 1, its kink never on a knot of N = 8 ... 64, so the rate is 1/N."""


def net_of(result: Result):
    """The returned weights as a function of x, evaluated here: sum_i v_i relu(w_i x + b_i) + c."""
    arrays = result.arrays
    w, b = arrays["hidden_weight"], arrays["hidden_bias"]
    v, c = arrays["output_weight"], float(arrays["output_bias"][0])
    return lambda x: np.maximum(np.outer(x, w) + b, 0.0) @ v + c


def true_max_error(result: Result, target) -> float:
    return float(np.abs(net_of(result)(FINE) - target(FINE)).max())


def constructed(convlens_run, tiny_model, sample_image, units: int, **params) -> Result:
    events = convlens_run(
        "universal_approximation", tiny_model, sample_image, units=units, grow=False, **params
    )
    return of_type(events, Result)[-1]


def test_the_constructed_error_on_a_sine_falls_as_one_over_n(convlens_run, tiny_model, sample_image):
    errors = []
    for units in SIZES:
        result = constructed(convlens_run, tiny_model, sample_image, units)
        assert len(result.arrays["output_weight"]) == units
        errors.append(true_max_error(result, lambda x: np.sin(np.pi * x)))
        assert result.data["max_error"] == pytest.approx(errors[-1], rel=1e-3)
    # sin(pi x) is pi-Lipschitz: the interpolation's error is at most L h / 2 = pi / N.
    assert all(error * units <= np.pi for error, units in zip(errors, SIZES, strict=True)), errors
    assert all(before / after >= 1.8 for before, after in zip(errors, errors[1:], strict=False)), errors


def test_a_lipschitz_kink_is_approximated_at_the_rate_one_over_n_exactly(
    convlens_run, tiny_model, sample_image
):
    scaled = []
    for units in SIZES:
        result = constructed(convlens_run, tiny_model, sample_image, units, target="drawn", points=KINK)
        scaled.append(true_max_error(result, lambda x: np.abs(x - 0.3)) * units)
    # Bounded by L (b - a) / 2 = 1, and not faster than 1/N: the kink between knots leaves an error ~ h.
    assert all(0.3 <= value <= 1.0 for value in scaled), scaled


def test_growing_n_streams_the_target_the_sum_and_each_units_contribution(
    convlens_run, tiny_model, sample_image
):
    events = convlens_run("universal_approximation", tiny_model, sample_image, units=12)
    points = of_type(events, Points)
    target = next(p for p in points if p.label == "target").positions
    assert np.allclose(target[:, 1], np.sin(np.pi * target[:, 0]), atol=1e-6)
    sums = [p for p in points if p.label == "sum"]
    assert [p.step for p in sums] == list(range(1, 13))
    last_units = [p for p in points if p.label == "units"][-1].positions.reshape(12, len(target), 2)
    c = float(of_type(events, Result)[-1].arrays["output_bias"][0])
    assert np.allclose(last_units[:, :, 1].sum(axis=0) + c, sums[-1].positions[:, 1], atol=1e-5)
    assert np.allclose(last_units[:, :, 0], target[:, 0])
    largest = metric(events, "max_error")
    assert len(largest) == 12 and largest[-1] < largest[0] / 10
    outside = [p for p in points if p.label == "outside sum"][-1].positions
    assert outside[0, 0] == -3 and outside[-1, 0] == 3


def test_the_fitted_loss_falls_and_a_seed_repeats_bit_for_bit(convlens_run, tiny_model, sample_image):
    params = {"mode": "fitted", "units": 16, "steps": 300, "every": 50, "target": "abs"}
    first = convlens_run("universal_approximation", tiny_model, sample_image, seed=5, **params)
    loss = metric(first, "loss")
    assert loss[-1] < loss[0] / 10, loss
    again = of_type(
        convlens_run("universal_approximation", tiny_model, sample_image, seed=5, **params), Result
    )
    other = of_type(
        convlens_run("universal_approximation", tiny_model, sample_image, seed=6, **params), Result
    )
    result = of_type(first, Result)[-1]
    for name, array in result.arrays.items():
        assert np.array_equal(array, again[-1].arrays[name]), name
    assert not np.array_equal(result.arrays["hidden_bias"], other[-1].arrays["hidden_bias"])
    assert true_max_error(result, np.abs) == pytest.approx(result.data["max_error"], rel=1e-2)


def test_a_diverging_learning_rate_stops_the_run_naming_it(client):
    job = run_job(client, "universal_approximation", params={"mode": "fitted", "lr": 10.0, "steps": 50})
    assert job["state"] == "failed"
    assert job["error"]["field"] == "params.lr" and "diverged" in job["error"]["error"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"units": 0}, "params.units"),
        ({"units": 257}, "params.units"),
        ({"target": "drawn", "points": "0.5,1"}, "params.points"),
        ({"target": "drawn", "points": ""}, "params.points"),
        ({"target": "drawn", "points": "0.5,1; 0.5,2"}, "params.points"),
        ({"target": "drawn", "points": "0,1; 2,0"}, "params.points"),
        ({"target": "drawn", "points": "0,1; 1"}, "params.points"),
        ({"mode": "guess"}, "params.mode"),
    ],
)
def test_bad_parameters_are_refused_with_400_naming_the_field(client, params, field):
    answer = client.post(
        "/api/jobs",
        json={
            "method": "universal_approximation",
            "model": "efficientnet_lite0.onnx",
            "image": "chelsea",
            "params": params,
        },
    )
    assert answer.status_code == 400, answer.get_json()
    assert answer.get_json()["field"] == field


def test_a_drawn_target_runs_through_the_server_and_passes_through_its_points(client):
    drawn = np.array([[-0.8, 0.2], [-0.1, 1.1], [0.4, -0.6], [0.9, 0.3]])
    text = "; ".join(f"{x},{y}" for x, y in drawn)
    job_id = start_job(
        client, "universal_approximation", params={"target": "drawn", "points": text, "units": 40}
    )
    job = wait_for(client, job_id)
    assert job["state"] == "done", job["error"]
    folder = client.application.extensions["convlens"].config.results_dir / job_id
    x, target = np.load(folder / "x.npy"), np.load(folder / "target.npy")
    assert np.interp(drawn[:, 0], x, target) == pytest.approx(drawn[:, 1], abs=1e-9)


def test_points_parse_sorted_with_the_last_y_of_a_repeated_x():
    assert parse_points(" 0.5,1 ;-1,0; 0.5,2 ").tolist() == [[-1.0, 0.0], [0.5, 2.0]]
    with pytest.raises(BadInput) as refused:
        parse_points("nan,1; 0,0")
    assert refused.value.field == "params.points"
