"""The linear explanation: the deck's 10-dimensional logistic example, its numbers checked with plain Python math."""

from __future__ import annotations

import math

import numpy as np
import pytest

from convlens.errors import BadInput
from convlens.events import Frame, Metrics, Result
from convlens.models.default import DEFAULT_MODEL_ID
from convlens.testing import metric, of_type

X = [2, -1, 3, -2, 2, 2, 1, -4, 5, 1]
W = [-1, -1, 1, -1, 1, -1, 1, 1, -1, 1]
RED = (214, 39, 40)
GREY = (128, 128, 128)


def plain_score(x: list[float]) -> float:
    return sum(wi * xi for wi, xi in zip(W, x, strict=True))


def plain_probability(score: float) -> float:
    return 1 / (1 + math.exp(-score))


def moved(epsilon: float) -> list[float]:
    return [xi + epsilon * math.copysign(1, wi) for xi, wi in zip(X, W, strict=True)]


def test_the_decks_numbers_come_out_to_the_shown_digits(convlens_run, tiny_model, sample_image):
    data = of_type(convlens_run("linear_explanation", tiny_model, sample_image), Result)[-1].data
    assert data["score"] == -3 and round(data["p"], 4) == 0.0474
    assert data["score_adv"] == 2 and round(data["p_adv"], 2) == 0.88
    # The same numbers computed here, independently of convlens.
    assert plain_score(X) == -3 and round(plain_probability(-3), 4) == 0.0474
    assert plain_score(moved(0.5)) == 2 and round(plain_probability(2), 2) == 0.88
    assert data["p"] == pytest.approx(plain_probability(plain_score(X)), rel=1e-12)
    assert data["p_adv"] == pytest.approx(plain_probability(plain_score(moved(0.5))), rel=1e-12)
    assert data["x"] == X and data["w"] == W and data["x_adv"] == moved(0.5)
    assert data["contributions"] == {
        "before": [wi * xi for wi, xi in zip(W, X, strict=True)],
        "after": [wi * xi for wi, xi in zip(W, moved(0.5), strict=True)],
    }


@pytest.mark.parametrize(("epsilon", "steps"), [(0.5, 20), (2.0, 7), (0.0, 3)])
def test_the_sweep_draws_score_minus_three_plus_ten_epsilon(
    convlens_run, tiny_model, sample_image, epsilon, steps
):
    events = convlens_run("linear_explanation", tiny_model, sample_image, epsilon=epsilon, steps=steps)
    epsilons = [epsilon * k / steps for k in range(steps + 1)]
    assert metric(events, "epsilon") == pytest.approx(epsilons, abs=1e-12)
    assert metric(events, "score") == pytest.approx([-3 + 10 * e for e in epsilons], abs=1e-12)
    assert metric(events, "probability") == pytest.approx(
        [plain_probability(-3 + 10 * e) for e in epsilons], rel=1e-12
    )
    assert [m.step for m in of_type(events, Metrics)] == list(range(steps + 1))
    data = of_type(events, Result)[-1].data
    assert data["score_adv"] == pytest.approx(-3 + 10 * epsilon, abs=1e-12)


def bar(picture: np.ndarray, column: int, colour: tuple[int, int, int]) -> int:
    """The signed length in pixels of the bar of ``colour`` in ``column``: up is positive."""
    rows = np.flatnonzero((picture[:, column] == colour).all(axis=1))
    if rows.size == 0:
        return 0
    zero = picture.shape[0] // 2
    assert rows.max() < zero or rows.min() > zero, "a bar lies on one side of the zero line"
    return rows.size if rows.max() < zero else -rows.size


def test_the_bars_show_each_dimensions_contribution_before_and_after(convlens_run, tiny_model, sample_image):
    events = convlens_run("linear_explanation", tiny_model, sample_image, epsilon=1.5, steps=4)
    frames = of_type(events, Frame)
    assert len(frames) == 5
    before = [wi * xi for wi, xi in zip(W, X, strict=True)]
    after = [wi * xi for wi, xi in zip(W, moved(1.5), strict=True)]
    scale = max(abs(c) for c in before + after)
    picture = frames[-1].pixels()
    height, width, _ = picture.shape
    assert max(height, width) <= 512
    assert (picture[height // 2] == 0).all()
    slot = width // len(X)
    reach = height // 2 - 10
    for index in range(len(X)):
        centre = index * slot + slot // 2
        assert bar(picture, centre - 4, GREY) == pytest.approx(before[index] / scale * reach, abs=1)
        assert bar(picture, centre + 4, RED) == pytest.approx(after[index] / scale * reach, abs=1)
    first = frames[0].pixels()
    for index in range(len(X)):
        centre = index * slot + slot // 2
        assert bar(first, centre + 4, RED) == bar(first, centre - 4, GREY), "at ε = 0 after equals before"


@pytest.mark.parametrize("params", [{"epsilon": -0.1}, {"epsilon": 2.01}])
def test_epsilon_outside_its_bounds_is_a_400_naming_it(client, params):
    answer = client.post(
        "/api/jobs",
        json={
            "method": "linear_explanation",
            "model": DEFAULT_MODEL_ID,
            "image": "chelsea",
            "params": params,
        },
    )
    assert answer.status_code == 400
    assert answer.get_json()["field"] == "params.epsilon"


def test_it_needs_nothing_of_the_model(convlens_run, tiny_model, sample_image):
    from convlens.testing import find_method

    assert find_method("linear_explanation").needs == frozenset()
    with pytest.raises(BadInput) as error:
        convlens_run("linear_explanation", tiny_model, sample_image, steps=0)
    assert error.value.field == "params.steps"
