"""The handwritten digits demo: a 1- or 2-layer net trained live on scikit-learn's digits (issue 22)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from convlens.errors import BadInput
from convlens.events import Frame, Result
from convlens.models.default import DEFAULT_MODEL_ID
from convlens.testing import make_tiny_model, metric, of_type, run_method
from convlens_plugins.training.digits import SIDE, TILE, load_digits_split

QUICK = {"hidden_units": 32, "epochs": 3}


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_model()


@pytest.fixture(scope="module")
def picture():
    return np.zeros((8, 8, 3), dtype=np.uint8)  # the demo trains on its own data; the job's picture is unused


def result_of(events) -> Result:
    return of_type(events, Result)[-1]


def test_the_two_layer_net_reaches_97_percent_on_the_test_split_with_the_defaults(tiny, picture):
    events = run_method("digits", tiny, picture, seed=0)
    result = result_of(events)
    accuracy = metric(events, "test_accuracy")
    assert len(accuracy) == 30  # one point per epoch, the defaults' 30
    assert result.data["test_accuracy"] == accuracy[-1] >= 0.97
    losses = metric(events, "loss")
    assert losses[-1] < losses[0] / 10
    # the kept model predicts the test digits as the run counted them
    _, _, test_x, test_y, _ = load_digits_split(0)
    pictures = torch.from_numpy(np.repeat(test_x.reshape(-1, 1, SIDE, SIDE), 3, axis=1))
    with torch.no_grad():
        predicted = result.models["digits"].module(pictures).argmax(1).numpy()
    assert (predicted == test_y).mean() == result.data["test_accuracy"]


def test_the_split_is_stratified_80_20_and_drawn_with_the_seed():
    train_x, train_y, test_x, test_y, test_index = load_digits_split(4)
    assert len(train_x) == 1437 and len(test_x) == 360
    assert np.bincount(test_y).min() >= 35  # every digit about a fifth of its 174-183 images
    digits = load_digits()
    np.testing.assert_array_equal(test_y, digits.target[test_index])
    np.testing.assert_array_equal(test_x, digits.data[test_index] / 16.0)
    assert not np.array_equal(load_digits_split(5)[4], test_index)


def test_a_seed_repeats_its_run_and_another_seed_differs(tiny, picture):
    first = metric(run_method("digits", tiny, picture, seed=5, **QUICK), "loss")
    again = metric(run_method("digits", tiny, picture, seed=5, **QUICK), "loss")
    other = metric(run_method("digits", tiny, picture, seed=6, **QUICK), "loss")
    assert first == again
    assert first != other


def test_one_layer_frames_show_the_ten_class_templates_and_the_end_the_confusion_and_mistakes(tiny, picture):
    events = run_method("digits", tiny, picture, seed=2, layers=1, epochs=4, learning_rate=0.01)
    templates = [frame.pixels() for frame in of_type(events, Frame) if frame.label == "templates"]
    assert len(templates) == 5  # before training, then after each epoch
    side = SIDE * TILE
    assert templates[0].shape == (side, 10 * side + 9 * 2, 3)
    assert not np.array_equal(templates[0], templates[-1])  # the weights changed as it learnt
    result = result_of(events)
    confusion = np.array(result.data["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == 360
    assert np.trace(confusion) / 360 == result.data["test_accuracy"] > 0.85
    wrong = result.data["misclassified"]
    assert len(wrong) == 360 - np.trace(confusion)
    targets = load_digits().target
    assert all(targets[entry["index"]] == entry["true"] != entry["predicted"] for entry in wrong)
    labels = [frame.label for frame in of_type(events, Frame)]
    assert labels[-2:] == ["confusion", "misclassified"]
    # the 1-layer net's template of a digit looks most like that digit: it correlates best with its mean image
    _, _, test_x, test_y, _ = load_digits_split(2)
    means = np.stack([test_x[test_y == digit].mean(0) for digit in range(10)])
    weights = result.models["digits"].module.net[0].weight.detach().numpy()
    centred = lambda rows: rows - rows.mean(1, keepdims=True)  # noqa: E731
    correlation = centred(weights) @ centred(means).T
    assert (correlation.argmax(1) == np.arange(10)).sum() >= 8


def test_two_layer_frames_show_the_first_16_hidden_units(tiny, picture):
    events = run_method("digits", tiny, picture, seed=2, **QUICK)
    templates = [frame for frame in of_type(events, Frame) if frame.label == "templates"]
    side = SIDE * TILE
    assert templates[-1].pixels().shape == (side, 16 * side + 15 * 2, 3)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"epochs": 0}, "params.epochs"),
        ({"epochs": 100000}, "params.epochs"),
        ({"learning_rate": 0}, "params.learning_rate"),
        ({"learning_rate": -0.1}, "params.learning_rate"),
        ({"hidden_units": 0}, "params.hidden_units"),
        ({"hidden_units": 100000}, "params.hidden_units"),
        ({"layers": 3}, "params.layers"),
        ({"batch_size": 0}, "params.batch_size"),
    ],
)
def test_bad_parameters_are_refused_naming_the_field(client, params, field):
    body = {"method": "digits", "model": DEFAULT_MODEL_ID, "image": "chelsea", "params": params}
    answer = client.post("/api/jobs", json=body)
    assert answer.status_code == 400, answer.get_json()
    assert answer.get_json()["field"] == field


def test_a_diverging_learning_rate_stops_the_job_naming_it(client):
    from test_api import run_job

    job = run_job(client, "digits", params={"learning_rate": 10, "epochs": 5})
    assert job["state"] == "failed"
    assert job["error"]["field"] == "params.learning_rate"
    assert "diverge" in job["error"]["error"]
    with pytest.raises(BadInput, match="learning_rate"):
        run_method("digits", make_tiny_model(), np.zeros((8, 8, 3), np.uint8), learning_rate=10, epochs=5)
