"""A method a model cannot serve is listed as unavailable with the reason, and a job for it is refused with 422,
through the real app: here a frozen TorchScript file, whose submodules were inlined away, so it has no layers.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

from convlens.app import create_app
from convlens.config import Config


@pytest.fixture(scope="module")
def frozen_client(tmp_path_factory: pytest.TempPathFactory):
    models = tmp_path_factory.mktemp("frozen-models")
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    ).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.freeze(torch.jit.script(net)), str(models / "frozen.pt"))
    (models / "frozen.json").write_text(json.dumps({"title": "frozen", "input_size": [32, 32]}))
    config = Config(
        models_dirs=[models], data_dir=tmp_path_factory.mktemp("frozen-data"), ensure_default_model=False
    )
    app = create_app(config)
    app.config["TESTING"] = True
    return app.test_client()


def test_methods_needing_layers_are_listed_unavailable_with_the_reason(frozen_client):
    model = frozen_client.get("/api/models/frozen.pt").get_json()
    assert set(model["capabilities"]) == {"gradients", "relu_rules"}
    methods = {m["name"]: m for m in frozen_client.get("/api/methods?model=frozen.pt").get_json()}
    for name in ("gradcam", "guided_gradcam", "deepdream"):
        assert "layers" in methods[name]["unavailable"], name
    for name in ("saliency", "guided_backprop", "deconvnet", "integrated_gradients", "occlusion"):
        assert methods[name]["unavailable"] is None, name


@pytest.mark.parametrize("method", ["gradcam", "deepdream"])
def test_a_job_the_model_cannot_serve_is_refused_with_422(frozen_client, method):
    answer = frozen_client.post(
        "/api/jobs", json={"method": method, "model": "frozen.pt", "image": "chelsea"}
    )
    assert answer.status_code == 422
    body = answer.get_json()
    assert body["field"] == "method" and "layers" in body["error"]
    # The server is still up and serves what the model can do.
    answer = frozen_client.post(
        "/api/jobs", json={"method": "guided_backprop", "model": "frozen.pt", "image": "chelsea"}
    )
    assert answer.status_code == 202, answer.get_json()
