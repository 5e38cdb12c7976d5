"""The handwritten digits demo: a 1-layer and a 2-layer net trained live side by side on scikit-learn's digits
(issue 22)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from convlens.errors import BadInput
from convlens.events import Frame, Metrics, Result
from convlens.models.default import DEFAULT_MODEL_ID
from convlens.testing import make_tiny_model, metric, of_type, run_method
from convlens_plugins.training.digits import SIDE, TILE, load_digits_split

QUICK = {"hidden_units": 32, "epochs": 3}
NETS = ("one_layer", "two_layer")


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
    _, _, test_x, test_y, _ = load_digits_split(0)
    pictures = torch.from_numpy(np.repeat(test_x.reshape(-1, 1, SIDE, SIDE), 3, axis=1))
    for name in NETS:  # the defaults train both nets side by side
        accuracy = metric(events, f"{name}.test_accuracy")
        assert len(accuracy) == 30  # one point per epoch, the defaults' 30
        net = result.data["nets"][name]
        assert net["test_accuracy"] == accuracy[-1]
        losses = metric(events, f"{name}.loss")
        assert losses[-1] < losses[0] / 2
        assert metric(events, f"{name}.train_accuracy")[-1] >= accuracy[-1] - 0.05
        # the kept model predicts the test digits as the run counted them
        with torch.no_grad():
            predicted = result.models[name].module(pictures).argmax(1).numpy()
        assert (predicted == test_y).mean() == net["test_accuracy"]
    assert result.data["nets"]["two_layer"]["test_accuracy"] >= 0.97
    assert result.data["nets"]["one_layer"]["test_accuracy"] >= 0.9
    assert metric(events, "two_layer.loss")[-1] < metric(events, "two_layer.loss")[0] / 10
    assert result.data["input_size"] == [8, 8] and result.data["drawing"] == "optdigits"
    assert result.data["labels"] == [str(digit) for digit in range(10)]
    assert sorted(result.models) == list(NETS)


def test_the_split_is_stratified_80_20_and_drawn_with_the_seed():
    train_x, train_y, test_x, test_y, test_index = load_digits_split(4)
    assert len(train_x) == 1437 and len(test_x) == 360
    assert np.bincount(test_y).min() >= 35  # every digit about a fifth of its 174-183 images
    digits = load_digits()
    np.testing.assert_array_equal(test_y, digits.target[test_index])
    np.testing.assert_array_equal(test_x, digits.data[test_index] / 16.0)
    assert not np.array_equal(load_digits_split(5)[4], test_index)


def test_a_seed_repeats_its_run_and_another_seed_differs(tiny, picture):
    def losses(seed: int, **params) -> list[list[float]]:
        events = run_method("digits", tiny, picture, seed=seed, **{**QUICK, **params})
        return [metric(events, f"{name}.loss") for name in NETS]

    first = losses(5)
    assert first == losses(5)
    assert first[0] != losses(6)[0] and first[1] != losses(6)[1]
    # both nets' weights are drawn whichever train, then each epoch's order: a net learns alone as beside the other
    for index, (layers, name) in enumerate([("1", "one_layer"), ("2", "two_layer")]):
        alone = run_method("digits", tiny, picture, seed=5, layers=layers, **QUICK)
        assert metric(alone, f"{name}.loss") == first[index]
        assert all(
            set(m.values) == {f"{name}.loss", f"{name}.train_accuracy", f"{name}.test_accuracy"}
            for m in of_type(alone, Metrics)
        )


def test_one_layer_frames_show_the_ten_class_templates_and_the_end_the_confusion_and_mistakes(tiny, picture):
    events = run_method("digits", tiny, picture, seed=2, layers="1", epochs=4, learning_rate=0.01)
    templates = [frame.pixels() for frame in of_type(events, Frame) if frame.label == "templates"]
    assert len(templates) == 5  # before training, then after each epoch
    side = SIDE * TILE
    assert templates[0].shape == (side, 10 * side + 9 * 2, 3)
    assert not np.array_equal(templates[0], templates[-1])  # the weights changed as it learnt
    result = result_of(events)
    assert list(result.data["nets"]) == ["one_layer"] and list(result.models) == ["one_layer"]
    net = result.data["nets"]["one_layer"]
    confusion = np.array(net["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == 360
    assert np.trace(confusion) / 360 == net["test_accuracy"] > 0.85
    wrong = net["misclassified"]
    assert len(wrong) == 360 - np.trace(confusion)
    targets = load_digits().target
    assert all(targets[entry["index"]] == entry["true"] != entry["predicted"] for entry in wrong)
    labels = [frame.label for frame in of_type(events, Frame)]
    assert labels[-2:] == ["one_layer.confusion", "one_layer.misclassified"]
    assert "hidden" not in labels
    # the 1-layer net's template of a digit looks most like that digit: it correlates best with its mean image
    _, _, test_x, test_y, _ = load_digits_split(2)
    means = np.stack([test_x[test_y == digit].mean(0) for digit in range(10)])
    weights = result.models["one_layer"].module.net[0].weight.detach().numpy()
    centred = lambda rows: rows - rows.mean(1, keepdims=True)  # noqa: E731
    correlation = centred(weights) @ centred(means).T
    assert (correlation.argmax(1) == np.arange(10)).sum() >= 8


def test_both_nets_stream_their_weights_and_end_with_a_confusion_matrix_and_mistakes_each(tiny, picture):
    events = run_method("digits", tiny, picture, seed=2, **QUICK)
    frames = of_type(events, Frame)
    side = SIDE * TILE
    hidden = [frame.pixels() for frame in frames if frame.label == "hidden"]
    templates = [frame.pixels() for frame in frames if frame.label == "templates"]
    assert len(hidden) == len(templates) == 4  # before training, then after each of the 3 epochs
    assert hidden[-1].shape == (side, 16 * side + 15 * 2, 3)  # the first 16 hidden units
    assert templates[-1].shape == (side, 10 * side + 9 * 2, 3)
    assert [frame.label for frame in frames[-4:]] == [
        "one_layer.confusion",
        "one_layer.misclassified",
        "two_layer.confusion",
        "two_layer.misclassified",
    ]
    result = result_of(events)
    assert set(of_type(events, Metrics)[0].values) == {
        f"{name}.{key}" for name in NETS for key in ("loss", "train_accuracy", "test_accuracy")
    }
    for name in NETS:
        net = result.data["nets"][name]
        assert np.array(net["confusion"]).sum() == 360
        assert len(net["misclassified"]) == 360 - np.trace(np.array(net["confusion"]))
        np.testing.assert_array_equal(result.arrays[f"{name}_confusion"], net["confusion"])


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
        ({"layers": "3"}, "params.layers"),
        ({"layers": 2}, "params.layers"),  # the choices are strings now: "1", "2" or "both"
        ({"dataset": "skimage_crops"}, "params.dataset"),  # not MNIST's IDX files
        ({"dataset": "no such set"}, "params.dataset"),
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


@pytest.fixture(scope="module")
def trained_job(app):
    """A quick digits job over the API: both nets saved as models."""
    from test_api import run_job

    job = run_job(app.test_client(), "digits", params=QUICK, seed=7)
    assert job["state"] == "done", job.get("error")
    return job


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max())
    return shifted / shifted.sum()


@pytest.mark.parametrize("name", NETS)
def test_a_drawn_digit_posted_as_numbers_is_classified_as_the_saved_onnx_file_classifies_it(
    client, app_config, trained_job, name
):
    import onnxruntime

    model_id = f"{trained_job['id']}-{name}.onnx"
    assert model_id in trained_job["result"]["models"]
    _, _, test_x, _, _ = load_digits_split(7)
    digit = test_x[3].reshape(SIDE, SIDE)
    answer = client.post(f"/api/models/{model_id}/predict", json={"pixels": digit.tolist(), "k": 10})
    assert answer.status_code == 200, answer.get_json()
    top = answer.get_json()
    assert [entry["label"] for entry in top] == [str(entry["index"]) for entry in top]
    assert sorted(entry["index"] for entry in top) == list(range(10))
    # the oracle: the ONNX file itself, run by onnxruntime on the digit as 1×3×8×8 (grey in every channel)
    session = onnxruntime.InferenceSession(str(app_config.trained_dir / model_id))
    feed = np.repeat(digit[None, None].astype(np.float32), 3, axis=1)
    probabilities = softmax(session.run(None, {session.get_inputs()[0].name: feed})[0][0].astype(np.float64))
    for entry in top:
        assert entry["probability"] == pytest.approx(probabilities[entry["index"]], abs=1e-5)
    assert top[0]["index"] == int(probabilities.argmax())
    # the same picture as H×W×3 RGB gives the same answer; k defaults to 5 as GET predict's does
    rgb = np.repeat(digit[..., None], 3, axis=2).tolist()
    again = client.post(f"/api/models/{model_id}/predict", json={"pixels": rgb}).get_json()
    assert [entry["index"] for entry in again] == [entry["index"] for entry in top[:5]]


HUGE = "1" + "0" * 400


def grid(cell: str, height: int = SIDE, width: int = SIDE) -> str:
    """An H×W JSON array whose [0][0] is the raw JSON text ``cell`` and every other value 0.5."""
    rows = [[cell if (row, column) == (0, 0) else "0.5" for column in range(width)] for row in range(height)]
    return "[" + ",".join("[" + ",".join(row) + "]" for row in rows) + "]"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"pixels": ' + grid("0.5", 513, SIDE) + "}", "pixels"),  # over-long: more rows than 512
        ('{"pixels": ' + grid("0.5", SIDE, 600) + "}", "pixels"),  # over-long rows
        ('{"pixels": ' + grid("0.5", 7, SIDE) + "}", "pixels"),  # not the model's 8×8
        ('{"pixels": ' + grid("0.5", 28, 28) + "}", "pixels"),
        ('{"pixels": ' + grid("[[[[0.5]]]]") + "}", "pixels"),  # nested too deep
        ('{"pixels": ' + "[" * 100_000 + "]" * 100_000 + "}", "body"),  # deeper than JSON is read
        ('{"pixels": [[0.5, 0.5], [0.5]]}', "pixels"),  # ragged
        ('{"pixels": ' + grid('"0.5"') + "}", "pixels"),  # a string
        ('{"pixels": ' + grid('"\\uff11"') + "}", "pixels"),  # a fullwidth digit "１"
        ('{"pixels": ' + grid("NaN") + "}", "pixels"),  # JSON tokens Python's json reads
        ('{"pixels": ' + grid("Infinity") + "}", "pixels"),
        ('{"pixels": ' + grid("-Infinity") + "}", "pixels"),
        ('{"pixels": ' + grid(HUGE) + "}", "pixels"),  # an integer too large for a float
        ('{"pixels": ' + grid("1e400") + "}", "pixels"),
        ('{"pixels": ' + grid("-0.01") + "}", "pixels"),
        ('{"pixels": ' + grid("1.5") + "}", "pixels"),
        ('{"pixels": ' + grid("true") + "}", "pixels"),
        ('{"pixels": ' + grid("null") + "}", "pixels"),
        ('{"pixels": ' + grid("[0.5, 0.5]") + "}", "pixels"),  # RGB needs 3 numbers
        ('{"pixels": "0.5"}', "pixels"),
        ('{"pixels": []}', "pixels"),
        ('{"k": 3}', "pixels"),
        ('{"pixels": ' + grid("0.5") + ', "k": 0}', "k"),
        ('{"pixels": ' + grid("0.5") + ', "k": 11}', "k"),
        ('{"pixels": ' + grid("0.5") + ', "k": "5"}', "k"),
        ('{"pixels": ' + grid("0.5") + ', "k": 1.5}', "k"),
        ('{"pixels": ' + grid("0.5") + ', "k": true}', "k"),
        ('{"pixels": ' + grid("0.5") + ', "k": ' + HUGE + "}", "k"),
        ("[0.5]", "body"),
    ],
)
def test_bad_pixels_or_k_are_a_400_naming_the_field(client, trained_job, body, field):
    model_id = f"{trained_job['id']}-two_layer.onnx"
    answer = client.post(f"/api/models/{model_id}/predict", data=body, content_type="application/json")
    assert answer.status_code == 400, answer.get_json()
    assert answer.get_json()["field"] == field


def test_predicting_with_an_unknown_model_is_a_404_naming_it(client):
    answer = client.post("/api/models/no-such-net.onnx/predict", json={"pixels": [[0.5]]})
    assert answer.status_code == 404
    assert answer.get_json()["field"] == "model"


def test_a_run_thread_limited_to_one_leaves_other_threads_and_itself_afterwards_as_they_were():
    import threading

    from convlens.thread_limit import threads_here

    seen = {}
    inside, release = threading.Event(), threading.Event()

    def limited() -> None:
        seen["before"] = torch.get_num_threads()
        with threads_here(1):
            seen["inside"] = torch.get_num_threads()
            seen["mkl inside"] = torch.__config__.parallel_info().count("mkl_get_max_threads() : 1")
            inside.set()
            release.wait(30)
        seen["after"] = torch.get_num_threads()

    worker = threading.Thread(target=limited)
    worker.start()
    assert inside.wait(30)
    other = {}
    beside = threading.Thread(target=lambda: other.setdefault("threads", torch.get_num_threads()))
    beside.start()
    beside.join()
    release.set()
    worker.join()
    assert torch.get_num_threads() >= 2  # the machines running this have 2 cores or more
    assert seen == {"before": torch.get_num_threads(), "inside": 1, "mkl inside": 1, "after": seen["before"]}
    assert other["threads"] == torch.get_num_threads()  # a thread started meanwhile keeps the process' count
