"""Goldfish weights: a linear softmax classifier on scikit-learn's digits, checked against scikit-learn's own."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from convlens.errors import BadInput
from convlens.events import Frame, Result
from convlens.testing import metric, of_type

TRAINING = 1500


@pytest.fixture(scope="module")
def oracle():
    """scikit-learn's L2 multinomial logistic regression (C = 1) on the first 1,500 digits in [0, 1]."""
    digits = load_digits()
    features, labels = digits.data / 16.0, digits.target
    model = LogisticRegression(C=1.0, tol=1e-10, max_iter=20_000).fit(features[:TRAINING], labels[:TRAINING])
    return model, features[TRAINING:], labels[TRAINING:]


def plain_nudge(
    digit: np.ndarray, weights: np.ndarray, label: int, target: int, epsilon: float
) -> np.ndarray:
    return np.clip(digit + epsilon * np.sign(weights[target] - weights[label]), 0, 1)


@pytest.mark.parametrize(("index", "target"), [(1, None), (2, 6), (10, 3)])
def test_the_nudge_flips_the_digit_to_the_target_as_scikit_learn_sees_it(
    convlens_run, tiny_model, sample_image, oracle, index, target
):
    model, held_out, held_out_labels = oracle
    events = convlens_run(
        "goldfish_weights", tiny_model, sample_image, index=index, target=target, epsilon=0.4
    )
    result = of_type(events, Result)[-1]
    data, weights = result.data, result.arrays["weights"].astype(np.float64)
    assert np.abs(weights - model.coef_).max() < 1e-4
    assert data["held_out_accuracy"] == pytest.approx(model.score(held_out, held_out_labels))
    digit, label = held_out[index], int(held_out_labels[index])
    assert data["label"] == label and np.array_equal(result.arrays["digit"].ravel(), digit)
    assert model.predict(digit[None])[0] == label
    if target is None:  # the runner-up class
        assert data["target"] == int(np.argsort(model.predict_proba(digit[None])[0])[-2])
    else:
        assert data["target"] == target
    target = data["target"]
    epsilons = [0.4 * k / 20 for k in range(21)]
    swept = np.stack([plain_nudge(digit, weights, label, target, e) for e in epsilons])
    assert np.array_equal(result.arrays["nudged"].ravel(), swept[-1])
    assert model.predict(swept[-1][None])[0] == target
    assert metric(events, "p_target") == pytest.approx(
        model.predict_proba(swept)[:, target].tolist(), abs=1e-4
    )
    flips = [e for e, prediction in zip(epsilons, model.predict(swept), strict=True) if prediction == target]
    assert data["flipped_at"] == pytest.approx(flips[0])


def test_the_templates_are_drawn_red_where_positive_and_blue_where_negative(
    convlens_run, tiny_model, sample_image, oracle
):
    model = oracle[0]
    events = convlens_run("goldfish_weights", tiny_model, sample_image, steps=1)
    picture = of_type(events, Frame)[0].pixels().astype(int)
    tile, gap, cell = 64, 4, 8
    for digit in range(10):
        top, left = (digit // 5) * (tile + gap), (digit % 5) * (tile + gap)
        for row in range(8):
            for col in range(8):
                red, green, blue = picture[top + row * cell + cell // 2, left + col * cell + cell // 2]
                weight = model.coef_[digit, row * 8 + col]
                if weight > 0.05:
                    assert red == 255 and blue < 255, (digit, row, col)
                elif weight < -0.05:
                    assert blue == 255 and red < 255, (digit, row, col)


def test_a_target_that_is_the_digits_own_label_is_refused(convlens_run, tiny_model, sample_image, oracle):
    label = int(oracle[2][1])
    with pytest.raises(BadInput) as error:
        convlens_run("goldfish_weights", tiny_model, sample_image, index=1, target=label)
    assert error.value.field == "params.target"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"index": 297}, "params.index"),
        ({"target": 10}, "params.target"),
        ({"epsilon": 1.5}, "params.epsilon"),
    ],
)
def test_bad_parameters_are_refused_naming_them(convlens_run, tiny_model, sample_image, params, field):
    with pytest.raises(BadInput) as error:
        convlens_run("goldfish_weights", tiny_model, sample_image, **params)
    assert error.value.field == field
