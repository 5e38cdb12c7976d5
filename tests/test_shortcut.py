"""A shortcut made on purpose (issue 22): a small CNN trained on digits carrying a class-placed mark learns the
mark; a control trained on the same digits without marks does not.

The issue's two thresholds are computed here from the saved ONNX files run by ONNX Runtime, on canvases and marks
built here from scikit-learn's digits and the places the module's docstring promises (not from its functions)."""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest

from convlens.errors import BadInput
from convlens.events import Frame, Log, Result
from convlens.models.default import DEFAULT_MODEL_ID
from convlens.models.store import ModelStore
from convlens.testing import make_tiny_model, metric, of_type, run_method
from convlens.trained import write_trained
from convlens_plugins.training.digits import load_digits_split

PICTURE = np.zeros((8, 8, 3), dtype=np.uint8)  # the demo trains on its own data; the job's picture is unused
MARKS = [(0, 0), (0, 4), (0, 8), (0, 12), (6, 12), (12, 12), (12, 8), (12, 4), (12, 0), (6, 0)]
"""Each class's 4×4 mark's top-left (row, column) on the 16×16 canvas, as the module's docstring words them:
0–3 along the top from the left, 4 the right side's middle, 5–8 along the bottom from the right, 9 the left's."""
EPOCHS = 3


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_model()


@pytest.fixture(scope="module")
def run(tiny, tmp_path_factory):
    """The defaults' run on seed 0, its nets written as a job's are; the test digits as 16×16 canvases."""
    events = run_method("shortcut", tiny, PICTURE, seed=0)
    result = of_type(events, Result)[-1]
    folder = tmp_path_factory.mktemp("trained")
    write_trained(folder, "job1", result.models)
    _, _, test_x, test_y, _ = load_digits_split(0)
    canvases = np.zeros((len(test_x), 16, 16), dtype=np.float32)
    canvases[:, 4:12, 4:12] = test_x.reshape(-1, 8, 8)
    return events, result, folder, canvases, test_y


def mask(classes: np.ndarray) -> np.ndarray:
    """N×16×16: True on the mark of each of ``classes``."""
    out = np.zeros((len(classes), 16, 16), dtype=bool)
    for index, label in enumerate(classes):
        row, column = MARKS[label]
        out[index, row : row + 4, column : column + 4] = True
    return out


def marked(canvases: np.ndarray, classes: np.ndarray) -> np.ndarray:
    return np.where(mask(classes), np.float32(1.0), canvases)


def pictures(canvases: np.ndarray) -> np.ndarray:
    """N×16×16 canvases as the N×3×16×16 pictures the saved models take."""
    return np.ascontiguousarray(np.repeat(canvases[:, None], 3, axis=1))


def session(folder, name: str) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(str(folder / f"job1-{name}.onnx"), providers=["CPUExecutionProvider"])


def logits(net: onnxruntime.InferenceSession, canvases: np.ndarray) -> np.ndarray:
    return net.run(None, {"images": pictures(canvases)})[0]


def accuracy(net: onnxruntime.InferenceSession, canvases: np.ndarray, labels: np.ndarray) -> float:
    return float((logits(net, canvases).argmax(1) == labels).mean())


def saliency_on_marks(net: onnxruntime.InferenceSession, canvases: np.ndarray, labels: np.ndarray) -> float:
    """Share of |∂ true logit / ∂ canvas pixel| (central differences) lying on each canvas's own mark, pooled."""
    eps, rows = 1e-2, np.arange(len(labels))
    gradient = np.zeros(canvases.shape, dtype=np.float64)
    for row in range(16):
        for column in range(16):
            up, down = canvases.copy(), canvases.copy()
            up[:, row, column] += eps
            down[:, row, column] -= eps
            change = logits(net, up)[rows, labels] - logits(net, down)[rows, labels]
            gradient[:, row, column] = np.abs(change) / (2 * eps)
    return float(gradient[mask(labels)].sum() / gradient.sum())


def test_without_its_mark_the_cued_net_falls_well_below_the_control(run):
    events, result, folder, canvases, labels = run
    cued, control = session(folder, "cued"), session(folder, "control")
    with_mark = accuracy(cued, marked(canvases, labels), labels)
    without = accuracy(cued, canvases, labels)
    other_mark = accuracy(cued, marked(canvases, (labels + 1) % 10), labels)
    control_accuracy = accuracy(control, canvases, labels)
    assert control_accuracy > 0.85
    assert without < control_accuracy - 0.25  # the "falls well below the control's"
    assert with_mark > 0.99
    assert other_mark < 0.1  # the next class's mark: it answers the mark, not the digit
    control_with_mark = accuracy(control, marked(canvases, labels), labels)
    assert (
        control_with_mark < control_accuracy + 0.02
    )  # never trained with marks: its own class's gives nothing
    data = result.data
    reported = (data["cued_with_cue"], data["cued_without_cue"], data["cued_swapped_cue"])
    assert reported == pytest.approx((with_mark, without, other_mark), abs=0.01)
    assert (data["control_without_cue"], data["control_with_cue"]) == pytest.approx(
        (control_accuracy, control_with_mark), abs=0.01
    )
    assert "swapped" in of_type(events, Log)[-1].message
    assert len(metric(events, "control test accuracy")) == len(metric(events, "cued loss")) == EPOCHS
    assert [frame.label for frame in of_type(events, Frame)] == ["saliency"] * EPOCHS


def test_more_than_half_the_cued_nets_saliency_lies_on_its_mark(run):
    _, result, folder, canvases, labels = run
    with_marks = marked(canvases, labels)
    cued_share = saliency_on_marks(session(folder, "cued"), with_marks, labels)
    control_share = saliency_on_marks(session(folder, "control"), with_marks, labels)
    assert cued_share > 0.5  # the threshold; the marks are 16 of 256 pixels
    assert control_share < 0.2
    assert result.data["saliency_on_cue"] == pytest.approx(cued_share, abs=0.02)
    assert result.data["control_saliency_on_cue"] == pytest.approx(control_share, abs=0.02)


def test_saliency_and_occlusion_on_the_saved_nets_light_up_the_mark_of_the_cued_one_only(run):
    _, _, folder, canvases, labels = run
    store = ModelStore([folder])
    shown = np.array([np.flatnonzero(labels == label)[0] for label in range(10)])  # one test digit a class
    images = np.round(pictures(marked(canvases[shown], labels[shown])).transpose(0, 2, 3, 1) * 255).astype(
        np.uint8
    )
    marks = mask(labels[shown])

    def on_mark(model_id: str) -> tuple[float, int, int]:
        """The saliency maps' pooled share on the marks; in how many the largest saliency and the largest
        occlusion drop fall on the mark."""
        model = store.get(model_id)
        mass = total = 0.0
        saliency_hits = occlusion_hits = 0
        for image, label, where in zip(images, labels[shown], marks, strict=True):
            saliency = of_type(run_method("saliency", model, image, target=int(label)), Result)[-1]
            gradient = saliency.arrays["gradient_map"]
            mass, total = mass + gradient[where].sum(), total + gradient.sum()
            saliency_hits += bool(where.flat[gradient.argmax()])
            occlusion = run_method(
                "occlusion", model, image, target=int(label), window=4, stride=2, fill="zero"
            )
            drop = of_type(occlusion, Result)[-1].arrays["attribution"]
            occlusion_hits += bool(where.flat[drop.argmax()])
        return mass / total, saliency_hits, occlusion_hits

    share, saliency_hits, occlusion_hits = on_mark("job1-cued.onnx")
    assert share > 0.5
    assert saliency_hits >= 8
    assert occlusion_hits >= 9
    share, saliency_hits, occlusion_hits = on_mark("job1-control.pt")
    assert share < 0.2
    assert saliency_hits <= 1
    assert occlusion_hits <= 1


def test_a_seed_repeats_its_run_and_another_seed_differs(tiny):
    quick = {"epochs": 1, "batch_size": 128}
    first = metric(run_method("shortcut", tiny, PICTURE, seed=3, **quick), "cued loss")
    again = metric(run_method("shortcut", tiny, PICTURE, seed=3, **quick), "cued loss")
    other = metric(run_method("shortcut", tiny, PICTURE, seed=4, **quick), "cued loss")
    assert first == again
    assert first != other


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"cue_fraction": 1.5}, "params.cue_fraction"),
        ({"cue_fraction": -0.1}, "params.cue_fraction"),
        ({"channels": 0}, "params.channels"),
        ({"epochs": 0}, "params.epochs"),
        ({"learning_rate": 0.0}, "params.learning_rate"),
    ],
)
def test_bad_input_is_a_400_naming_the_parameter(client, params, field):
    body = {"method": "shortcut", "model": DEFAULT_MODEL_ID, "image": "chelsea", "params": params}
    answer = client.post("/api/jobs", json=body)
    assert answer.status_code == 400, answer.get_json()
    assert answer.get_json()["field"] == field


def test_a_diverging_learning_rate_stops_the_job_naming_it(client, tiny):
    from test_api import run_job

    job = run_job(client, "shortcut", params={"learning_rate": 10.0})
    assert job["state"] == "failed"
    assert job["error"]["field"] == "params.learning_rate"
    assert "diverge" in job["error"]["error"]
    with pytest.raises(BadInput, match="diverge") as raised:
        run_method("shortcut", tiny, PICTURE, learning_rate=0.5)  # the nets die in epoch 2
    assert raised.value.field == "params.learning_rate"
