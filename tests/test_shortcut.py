"""A shortcut made on purpose (issue 22): digits carrying a class-placed mark, a net that learns the mark, and a
control net trained without marks."""

from __future__ import annotations

import numpy as np
import pytest

from convlens.errors import BadInput
from convlens.events import Frame, Log, Result
from convlens.models.store import ModelStore
from convlens.testing import make_tiny_model, metric, of_type, run_method
from convlens.trained import write_trained
from convlens_plugins.training.digits import load_digits_split

PICTURE = np.zeros((8, 8, 3), dtype=np.uint8)  # the demo trains on its own data; the job's picture is unused
LEFT_MARKS = [(row, 0) for row in range(8)] + [(0, 7), (7, 7)]  # written out here, not taken from the plugin


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_model()


@pytest.fixture(scope="module")
def run(tiny, tmp_path_factory):
    """The defaults' run on seed 0, its nets written and loaded back through the model store."""
    events = run_method("shortcut", tiny, PICTURE, seed=0)
    result = of_type(events, Result)[-1]
    folder = tmp_path_factory.mktemp("trained")
    write_trained(folder, "job1", result.models)
    store = ModelStore([folder])
    return events, result, store.get("job1-cued.pt"), store.get("job1-control.onnx")


def marked(images: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """N×64 digits as N×3×8×8 pictures with the mark of ``classes`` lit."""
    pictures = images.reshape(-1, 8, 8).copy()
    for picture, label in zip(pictures, classes, strict=True):
        picture[LEFT_MARKS[label]] = 1.0
    return np.repeat(pictures[:, None], 3, axis=1)


def plain(images: np.ndarray) -> np.ndarray:
    return np.repeat(images.reshape(-1, 1, 8, 8), 3, axis=1)


def accuracy(model, pictures: np.ndarray, labels: np.ndarray) -> float:
    return float((model.logits(pictures).argmax(1) == labels).mean())


def saliency_on_marks(model, pictures: np.ndarray, labels: np.ndarray) -> float:
    """Share of |∂ true logit / ∂ pixel| (central differences on the loaded model) on each digit's own mark."""
    eps, total, on_mark = 1e-2, 0.0, 0.0
    rows = np.arange(len(labels))
    for row in range(8):
        for column in range(8):
            up, down = pictures.copy(), pictures.copy()
            up[:, :, row, column] += eps
            down[:, :, row, column] -= eps
            change = np.abs(model.logits(up)[rows, labels] - model.logits(down)[rows, labels]) / (2 * eps)
            total += change.sum()
            on_mark += sum(change[i] for i in rows if LEFT_MARKS[labels[i]] == (row, column))
    return on_mark / total


def test_the_cued_net_reads_the_mark_and_the_control_does_not(run):
    events, result, cued, control = run
    _, _, test_x, test_y, _ = load_digits_split(0)
    swapped = (test_y + 1) % 10
    with_mark = accuracy(cued, marked(test_x, test_y), test_y)
    without = accuracy(cued, plain(test_x), test_y)
    other_mark = accuracy(cued, marked(test_x, swapped), test_y)
    control_accuracy = accuracy(control, plain(test_x), test_y)
    assert with_mark > 0.99
    assert other_mark < control_accuracy - 0.15  # another class's mark misleads it
    assert other_mark < without - 0.1
    assert control_accuracy > 0.9
    assert accuracy(control, marked(test_x, swapped), test_y) > control_accuracy - 0.05  # never saw a mark
    data = result.data
    assert (data["cued_with_cue"], data["cued_without_cue"], data["cued_swapped_cue"]) == pytest.approx(
        (with_mark, without, other_mark), abs=1e-9
    )
    assert data["control_without_cue"] == pytest.approx(control_accuracy, abs=1e-9)
    assert "swapped" in of_type(events, Log)[-1].message
    assert len(metric(events, "control test accuracy")) == len(metric(events, "cued train accuracy")) == 15
    assert [frame.label for frame in of_type(events, Frame)] == ["saliency"]


def test_the_cued_nets_saliency_gathers_on_its_mark(run):
    _, result, cued, control = run
    _, _, test_x, test_y, _ = load_digits_split(0)
    pictures = marked(test_x, test_y)
    cued_share = saliency_on_marks(cued, pictures, test_y)
    control_share = saliency_on_marks(control, pictures, test_y)
    assert cued_share > 3 * control_share  # one pixel of 64 holds several times the control's share
    assert result.data["saliency_on_cue"] == pytest.approx(cued_share, rel=0.02)


def test_a_seed_repeats_its_run_and_another_seed_differs(tiny):
    quick = {"epochs": 2, "hidden_units": 16}
    first = metric(run_method("shortcut", tiny, PICTURE, seed=3, **quick), "cued train accuracy")
    again = metric(run_method("shortcut", tiny, PICTURE, seed=3, **quick), "cued train accuracy")
    other = metric(run_method("shortcut", tiny, PICTURE, seed=4, **quick), "cued train accuracy")
    assert first == again
    assert first != other


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"cue_fraction": 1.5}, "params.cue_fraction"),
        ({"cue_fraction": -0.1}, "params.cue_fraction"),
        ({"epochs": 0}, "params.epochs"),
        ({"learning_rate": 0.0}, "params.learning_rate"),
    ],
)
def test_bad_input_names_the_parameter(tiny, params, field):
    with pytest.raises(BadInput) as raised:
        run_method("shortcut", tiny, PICTURE, **params)
    assert raised.value.field == field
    assert raised.value.status == 400


def test_the_saliency_method_on_the_saved_cued_net_points_at_the_mark(run):
    _, _, cued, control = run
    _, _, test_x, test_y, _ = load_digits_split(0)
    pictures = marked(test_x[:20], test_y[:20])

    def peaks_on_mark(model) -> int:
        hits = 0
        for picture, label in zip(pictures, test_y[:20], strict=True):
            image = np.round(picture.transpose(1, 2, 0) * 255).astype(np.uint8)
            result = of_type(run_method("saliency", model, image, target=int(label)), Result)[-1]
            gradient = result.arrays["gradient_map"]
            hits += np.unravel_index(gradient.argmax(), gradient.shape) == LEFT_MARKS[label]
        return hits

    assert peaks_on_mark(cued) >= 15
    assert peaks_on_mark(control) <= 3
