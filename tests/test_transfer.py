"""Transfer: the adversarial an attack makes on the run's model, shown to the other models of the store.

Each row is checked against a fresh forward of the models' eager modules (the random ResNet-18 exported in three
formats, the default model's own weights in its torch.export file) through plain torch: the top-1 before and after,
its probability, whether it changed, whether the target was reached. Also: ``"*"`` is every other model, the
run's own model never among them, and what a request may not name is refused naming ``params.transfer``.
"""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from convlens.events import Log, Result
from convlens.images import to_tensor
from convlens.models.store import ModelStore
from convlens.testing import of_type

SIZE = 64
LYNX = 287
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
RESNETS = ["resnet18.onnx", "resnet18.pt", "resnet18.pt2"]


@pytest.fixture(scope="module")
def store(resnet18_with_statistics, export_three_formats, models_dir, tmp_path_factory) -> ModelStore:
    """The random ResNet-18 (64 px, unlabelled: "class N") in three formats, then the default model's three."""
    directory = tmp_path_factory.mktemp("transfer-models")
    export_three_formats(resnet18_with_statistics, directory, SIZE)
    card = {"title": "ResNet-18 (random)", "input_size": [SIZE, SIZE], "mean": list(MEAN), "std": list(STD)}
    (directory / "resnet18.json").write_text(json.dumps(card))
    return ModelStore([directory, models_dir])


@pytest.fixture(scope="module")
def oracles(resnet18_with_statistics, pixel_space) -> dict:
    """The eager modules taking [0, 1] pixels, by model file stem."""
    from convlens.models.efficientnet_lite import build_efficientnet_lite0

    return {
        "resnet18": pixel_space(resnet18_with_statistics, MEAN, STD),
        "efficientnet_lite0": pixel_space(build_efficientnet_lite0(), MEAN, STD),
    }


@pytest.fixture(scope="module")
def targeted(store, default_model, sample_image) -> list:
    """A targeted FGSM toward lynx on the default model (ONNX), transferred to every other model of the store."""
    from convlens.runner import iterate, prepare_run
    from convlens.testing import find_method

    method = find_method("adversarial_attack")
    params = {"attack": "fgsm", "target": LYNX, "transfer": "*"}
    return list(
        iterate(method, prepare_run(method, default_model, sample_image, params, seed=3, models=store))
    )


def top1(oracle, images: torch.Tensor) -> tuple[int, float]:
    with torch.no_grad():
        probabilities = oracle(images)[0].double().softmax(0)
    return int(probabilities.argmax()), float(probabilities.max())


def test_star_is_every_other_model_of_the_store_in_its_order(targeted, store, default_model):
    rows = targeted[-1].data["transfer"]
    assert [row["model"] for row in rows] == [i for i in store.ids() if i != default_model.id]
    assert default_model.id == "efficientnet_lite0.onnx"
    assert {row["model"] for row in rows} == {*RESNETS, "efficientnet_lite0.pt", "efficientnet_lite0.pt2"}


def test_each_row_is_a_fresh_eager_forward_of_the_original_and_the_adversarial(
    targeted, oracles, default_model, sample_image
):
    result = targeted[-1]
    original = to_tensor(sample_image, default_model.input_size)
    adversarial = torch.from_numpy(result.arrays["adversarial"].transpose(2, 0, 1).copy())[None]
    for row in result.data["transfer"]:
        stem = row["model"].rsplit(".", 1)[0]
        pair = [original, adversarial]
        if stem == "resnet18":  # 64 px: both resized in float, antialiased, as the module promises
            pair = [
                F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", antialias=True).clamp(0, 1) for x in pair
            ]
        (before, p_before), (after, p_after) = (top1(oracles[stem], x) for x in pair)
        assert (row["before"]["class"], row["after"]["class"]) == (before, after), row["model"]
        assert row["before"]["probability"] == pytest.approx(p_before, abs=1e-4)
        assert row["after"]["probability"] == pytest.approx(p_after, abs=1e-4)
        assert row["fooled"] is (before != after)
        label = f"class {after}" if stem == "resnet18" else default_model.label(after)
        assert row["after"]["label"] == label


def test_the_same_weights_in_another_format_are_fooled_and_reach_the_target(targeted):
    result = targeted[-1]
    assert result.data["top5_after"][0]["class"] == LYNX  # the attack itself reached lynx
    rows = {row["model"]: row for row in result.data["transfer"]}
    for name in ("efficientnet_lite0.pt", "efficientnet_lite0.pt2"):
        assert rows[name]["fooled"] is True and rows[name]["target_reached"] is True
        assert rows[name]["after"]["class"] == LYNX
        assert rows[name]["before"]["class"] == result.data["top5_before"][0]["class"]
    # The ResNet's classes are "class N", not ImageNet's: whether it reached class 287 means nothing.
    assert all(rows[name]["target_reached"] is None for name in RESNETS)


def test_each_model_gets_a_log_line_saying_whether_it_was_fooled(targeted):
    lines = [log.message for log in of_type(targeted, Log) if log.message.startswith("transfer to ")]
    rows = targeted[-1].data["transfer"]
    assert len(lines) == len(rows)
    for line, row in zip(lines, rows, strict=True):
        verdict = (
            "fooled, target reached" if row["target_reached"] else "fooled" if row["fooled"] else "not fooled"
        )
        assert line.startswith(f"transfer to {row['model']}: ") and line.endswith(f", {verdict}")


def test_no_transfer_by_default_and_the_run_model_is_never_a_row(
    convlens_run, store, default_model, sample_image
):
    from convlens.runner import iterate, prepare_run
    from convlens.testing import find_method

    method = find_method("adversarial_attack")
    for transfer, expected in [
        (None, []),
        ([], []),
        (["efficientnet_lite0.onnx", "resnet18.pt"], ["resnet18.pt"]),
    ]:
        params = {"attack": "fgsm", "transfer": transfer} if transfer is not None else {"attack": "fgsm"}
        ctx = prepare_run(method, default_model, sample_image, params, models=store)
        assert [model.id for model in ctx.models["transfer"]] == expected
    result = list(iterate(method, ctx))[-1]
    assert isinstance(result, Result) and [row["model"] for row in result.data["transfer"]] == ["resnet18.pt"]


def wait_for(client, job_id: str, seconds: float = 120) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        job = client.get(f"/api/jobs/{job_id}").get_json()
        if job["state"] in ("done", "failed", "stopped") or time.monotonic() > deadline:
            return job
        time.sleep(0.2)


def test_a_run_through_the_server_transfers_to_the_models_it_names(client, oracles, sample_image):
    request = {
        "method": "adversarial_attack",
        "model": "efficientnet_lite0",
        "image": "chelsea",
        "seed": 1,
        "params": {"attack": "fgsm", "transfer": ["efficientnet_lite0.pt2"]},
    }
    answer = client.post("/api/jobs", json=request)
    assert answer.status_code == 202, answer.get_json()
    job = wait_for(client, answer.get_json()["id"])
    assert job["state"] == "done", job["error"]
    (row,) = job["result"]["data"]["transfer"]
    assert row["model"] == "efficientnet_lite0.pt2"
    original = to_tensor(sample_image, (224, 224))
    adversarial = client.get(f"/api/jobs/{job['id']}/arrays/adversarial.npy").data
    pixels = np.load(io.BytesIO(adversarial))
    before, _ = top1(oracles["efficientnet_lite0"], original)
    after, p_after = top1(
        oracles["efficientnet_lite0"], torch.from_numpy(pixels.transpose(2, 0, 1).copy())[None]
    )
    assert (row["before"]["class"], row["after"]["class"]) == (before, after)
    assert row["after"]["probability"] == pytest.approx(p_after, abs=1e-4)
    assert row["fooled"] is (before != after) and row["target_reached"] is None


@pytest.mark.parametrize(
    "transfer",
    [
        ["no-such-model.onnx"],
        "efficientnet_lite0.pt2",
        3,
        {"efficientnet_lite0.pt2": True},
        [3],
        [""],
        [None],
        ["efficientnet_lite0.pt2", "efficientnet_lite0.pt2"],
        [f"model-{index}.onnx" for index in range(17)],
        ["efficientnet_lite0.pt2\u0000"],
        ["\ud800"],
        ["efficientnet\u202elite0.pt2"],
        ["m" * 256],
    ],
)
def test_a_bad_transfer_list_is_a_400_naming_the_field(client, transfer):
    request = {"method": "adversarial_attack", "model": "efficientnet_lite0", "image": "chelsea"}
    answer = client.post("/api/jobs", json={**request, "params": {"attack": "fgsm", "transfer": transfer}})
    assert answer.status_code == 400
    assert answer.get_json()["field"] == "params.transfer"


def test_the_method_description_tells_the_page_how_to_draw_the_parameter(client):
    methods = {method["name"]: method for method in client.get("/api/methods").get_json()}
    (transfer,) = [p for p in methods["adversarial_attack"]["params"] if p["name"] == "transfer"]
    assert transfer["type"] == "models" and transfer["default"] is None and transfer["nullable"] is True
    assert (transfer["run_model"], transfer["every"], transfer["maximum"]) == ("excluded", "*", 16)
    (models,) = [p for p in methods["noise_predictions"]["params"] if p["name"] == "models"]
    assert (models["type"], models["default"], models["run_model"]) == ("models", "*", "first")
