"""Networks a job trained are saved with its result as ONNX and TorchScript files with a card, and load back
through the model store as models every method runs on."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from test_api import run_job, start_job, wait_for

from convlens.events import Result
from convlens.models.store import ModelStore
from convlens.testing import of_type
from convlens.trained import write_trained
from convlens_plugins.training.digits import load_digits_split

QUICK = {"layers": "2", "hidden_units": 32, "epochs": 2}


@pytest.fixture(scope="module")
def trained_digits(tiny_model, sample_image):
    """The ``digits`` run's trained net (2 quick epochs) and the test digits as 3x8x8 pictures in [0, 1]."""
    from convlens.testing import run_method

    result = of_type(run_method("digits", tiny_model, sample_image, seed=3, **QUICK), Result)[-1]
    _, _, test_x, _, _ = load_digits_split(3)
    pictures = np.repeat(test_x.reshape(-1, 1, 8, 8), 3, axis=1)
    return result.models["two_layer"], pictures


@pytest.fixture(scope="module")
def tiny_model():
    from convlens.testing import make_tiny_model

    return make_tiny_model()


@pytest.mark.parametrize("suffix", [".onnx", ".pt"])
def test_saved_model_loads_through_the_store_and_predicts_as_the_trained_net(
    tmp_path, trained_digits, suffix
):
    trained, pictures = trained_digits
    ids = write_trained(tmp_path, "job1", {"digits": trained})
    assert ids == ["job1-digits.onnx", "job1-digits.pt"]
    store = ModelStore([tmp_path])
    assert set(store.ids()) == set(ids)  # the card and no hidden half-written file are listed
    model = store.get(f"job1-digits{suffix}")
    assert model.input_size == (8, 8)
    assert model.labels == [str(digit) for digit in range(10)]
    with torch.no_grad():
        expected = trained.module(torch.from_numpy(pictures)).numpy()
    logits = model.logits(pictures)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    assert (logits.argmax(1) == expected.argmax(1)).all()
    card = json.loads((tmp_path / "job1-digits.json").read_text())
    assert card["trained_by"] == {"job": "job1", "name": "digits"}
    assert "Adam" in card["description"]


def test_a_job_over_the_api_saves_its_net_and_other_methods_run_on_it(client, app_config):
    job = run_job(client, "digits", params=QUICK, seed=1)
    assert job["state"] == "done", job.get("error")
    ids = job["result"]["models"]
    assert ids == [f"{job['id']}-two_layer.onnx", f"{job['id']}-two_layer.pt"]
    for model_id in ids:
        assert (app_config.trained_dir / model_id).is_file()
    listed = {model["id"]: model for model in client.get("/api/models").get_json()}
    assert listed[ids[0]]["input_size"] == [8, 8] and listed[ids[0]]["num_classes"] == 10
    assert listed[ids[1]]["format"] == "torchscript"

    # saliency on the saved net: an 8x8 map, of a digit picture the net predicts as the job's net did
    for model_id in ids:
        saliency = wait_for(client, start_job(client, "saliency", model=model_id, image="chelsea"))
        assert saliency["state"] == "done", saliency.get("error")
        gradient = np.load(app_config.results_dir / saliency["id"] / "gradient_map.npy")
        assert gradient.shape == (8, 8) and gradient.max() > 0
        assert saliency["result"]["model"]["id"] == model_id


def test_a_cli_run_saves_the_net_into_convlens_data_and_a_later_run_uses_it(
    tmp_path, models_dir, monkeypatch
):
    from convlens.cli import main

    monkeypatch.setenv("CONVLENS_DATA_DIR", str(tmp_path / "data"))
    options = ["--models-dir", str(models_dir), "--image", "chelsea", "--quiet"]
    params = [f"--param={name}={value}" for name, value in QUICK.items()]
    assert main(["run", "digits", *options, *params, "--out", str(tmp_path / "lesson")]) == 0
    result = json.loads((tmp_path / "lesson" / "result.json").read_text())
    assert result["models"] == ["lesson-two_layer.onnx", "lesson-two_layer.pt"]
    trained = sorted(path.name for path in (tmp_path / "data" / "trained").iterdir())
    assert trained == ["lesson-two_layer.json", "lesson-two_layer.onnx", "lesson-two_layer.pt"]
    later = ["run", "predict", "--model", "lesson-two_layer.pt", *options, "--out", str(tmp_path / "p")]
    assert main(later) == 0
    predicted = json.loads((tmp_path / "p" / "result.json").read_text())
    assert predicted["model"]["id"] == "lesson-two_layer.pt"
    assert predicted["predictions"][0]["label"] in [str(digit) for digit in range(10)]


def test_a_training_job_stopped_midway_keeps_no_model(client, app_config):
    job_id = start_job(client, "digits", params={"epochs": 500, "hidden_units": 32, "layers": "2"})
    job = client.application.extensions["convlens"].jobs.get(job_id)
    deadline = time.monotonic() + 120  # only guards against a hang
    while not job.metrics_history and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.metrics_history, "no epoch ended"
    assert client.post(f"/api/jobs/{job_id}/stop").status_code == 200
    stopped = wait_for(client, job_id)
    assert stopped["state"] == "stopped"
    assert len(stopped["metrics"]) == 3 and stopped["result"] is None
    assert not list(app_config.trained_dir.glob(f"{job_id}-*"))
    assert not any(model["id"].startswith(job_id) for model in client.get("/api/models").get_json())


def test_deleting_a_run_deletes_the_networks_it_trained(client, app_config):
    job = run_job(client, "digits", params=QUICK, seed=2)
    assert job["state"] == "done", job.get("error")
    assert sorted(path.name for path in app_config.trained_dir.glob(f"{job['id']}-*")) == [
        f"{job['id']}-two_layer.json",
        f"{job['id']}-two_layer.onnx",
        f"{job['id']}-two_layer.pt",
    ]
    assert client.delete(f"/api/jobs/{job['id']}").status_code == 204
    assert not list(app_config.trained_dir.glob(f"{job['id']}-*"))
    assert not any(model["id"].startswith(job["id"]) for model in client.get("/api/models").get_json())
