"""The `convlens` command as a user runs it, in a subprocess."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import matplotlib
import numpy as np
import torch
from PIL import Image
from torch import nn


def convlens(*args: str, models_dir) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "convlens", "--models-dir", str(models_dir), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_models_json_lists_three_formats(models_dir):
    answer = convlens("models", "--json", models_dir=models_dir)
    assert answer.returncode == 0, answer.stderr
    formats = {m["id"]: m["format"] for m in json.loads(answer.stdout)}
    assert formats["efficientnet_lite0.onnx"] == "onnx"
    assert formats["efficientnet_lite0.pt"] == "torchscript"
    assert formats["efficientnet_lite0.pt2"] == "export"


def test_methods_json_has_schemas(models_dir):
    answer = convlens("methods", "--json", models_dir=models_dir)
    assert answer.returncode == 0, answer.stderr
    methods = {m["name"]: m for m in json.loads(answer.stdout)}
    assert {"predict", "saliency", "deepdream"} <= set(methods)
    assert any(p["name"] == "octaves" for p in methods["deepdream"]["params"])
    text = convlens("methods", models_dir=models_dir)
    assert "deepdream" in text.stdout and "octaves" in text.stdout


def test_run_deepdream_writes_pngs_gif_and_result_json(models_dir, tmp_path):
    out = tmp_path / "dream"
    answer = convlens(
        "run", "deepdream", "--model", "efficientnet_lite0.pt", "--image", "chelsea",
        "--param", "steps=3", "--param", "octaves=2", "--param", "layer=_blocks.6", "--seed", "5", "--out", str(out),
        models_dir=models_dir,
    )  # fmt: skip
    assert answer.returncode == 0, answer.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["method"] == "deepdream" and result["seed"] == 5
    assert result["params"]["layer"] == "_blocks.6" and result["params"]["steps"] == 3
    digest = hashlib.sha256((models_dir / "efficientnet_lite0.pt").read_bytes()).hexdigest()
    assert result["model"] == {"id": "efficientnet_lite0.pt", "sha256": digest, "format": "torchscript"}
    assert result["predictions"][0]["label"] in ("Egyptian cat", "tabby", "tiger cat")
    for filename in result["files"].values():
        assert Image.open(out / filename).size[0] > 0
    gif = Image.open(out / "frames.gif")
    assert gif.n_frames == 6


def test_run_saliency_on_an_image_file(models_dir, tmp_path):
    picture = tmp_path / "cat.jpg"
    from skimage import data

    Image.fromarray(data.chelsea()).save(picture)
    answer = convlens(
        "run", "saliency", "--image", str(picture), "--out", str(tmp_path / "s"), models_dir=models_dir
    )
    assert answer.returncode == 0, answer.stderr
    result = json.loads((tmp_path / "s" / "result.json").read_text())
    assert result["model"]["id"] == "efficientnet_lite0.onnx"
    assert result["image"] == "cat.jpg"


class SmallNet(nn.Module):
    """Two strided convolutions and a linear layer: a classifier of 5 classes that runs in milliseconds."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 5, stride=2), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2), nn.ReLU()
        )
        self.classifier = nn.Linear(8, 5)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images).mean(dim=(2, 3)))


def test_run_saliency_writes_the_map_and_array_of_the_gradient_computed_by_autograd(models_dir, tmp_path):
    from skimage import data

    torch.manual_seed(0)
    net = SmallNet().eval()
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    picture = data.chelsea()  # the sample the CLI loads by name
    height, width = picture.shape[:2]
    small_models = tmp_path / "small_models"
    small_models.mkdir()
    torch.jit.save(torch.jit.trace(net, torch.zeros(1, 3, height, width)), str(small_models / "small.pt"))
    card = {"title": "small", "input_size": [height, width], "mean": mean, "std": std}  # no resizing
    (small_models / "small.pt.json").write_text(json.dumps(card))

    out = tmp_path / "saliency"
    # The checkout's models/ second: it holds the default model, so nothing is written into small_models.
    answer = subprocess.run(
        [
            sys.executable, "-m", "convlens", "--models-dir", str(small_models), "--models-dir", str(models_dir),
            "run", "saliency", "--model", "small.pt", "--image", "chelsea", "--out", str(out),
        ],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert answer.returncode == 0, answer.stderr

    # The oracle: max over channels of |d class score / d picture|, by autograd on the module itself.
    image = torch.from_numpy(picture.astype(np.float32) / 255).permute(2, 0, 1)[None].requires_grad_(True)
    logits = net((image - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))[0]
    target = int(logits.argmax())
    (gradient,) = torch.autograd.grad(logits[target], image)
    expected = gradient.abs().amax(dim=1)[0].numpy()

    result = json.loads((out / "result.json").read_text())
    assert result["data"]["target"] == target
    assert result["arrays"]["attribution"] == "attribution.npy"
    attribution = np.load(out / "attribution.npy")
    assert attribution.shape == (height, width)
    np.testing.assert_allclose(attribution, expected, rtol=1e-4, atol=1e-6 * expected.max())

    # The map PNG: the array divided by its 99th percentile, clipped to 1, as grey levels...
    scaled = np.minimum(expected / np.percentile(expected, 99), 1.0)
    grey = np.asarray(Image.open(out / result["files"]["map"]).convert("RGB")).astype(int)
    assert grey.shape == (height, width, 3) and grey.std() > 10
    assert np.abs(grey[..., 0] - np.floor(scaled * 255 + 0.5)).max() <= 1
    # ...and the saliency PNG: that map coloured with matplotlib's inferno, 0.7 over the picture.
    coloured = 0.7 * matplotlib.colormaps["inferno"](scaled)[..., :3] + 0.3 * picture / 255
    shown = np.asarray(Image.open(out / result["files"]["saliency"]).convert("RGB")).astype(int)
    assert shown.shape == (height, width, 3)
    # Within a level, and one step of the 256-colour table (inferno's largest is 5 levels, 3.5 at 0.7).
    assert np.abs(shown - coloured * 255).max() <= 4.5


def test_bad_input_exits_non_zero_with_the_field(models_dir, tmp_path):
    cases = [
        (("run", "deepdream", "--image", "chelsea", "--param", "steps=0"), "params.steps"),
        (("run", "deepdream", "--image", "chelsea", "--param", "steps=ten"), "params.steps"),
        (("run", "deepdream", "--image", "chelsea", "--param", "layer=nope"), "params.layer"),
        (("run", "deepdream", "--image", "chelsea", "--param", "nonsense"), "params"),
        (("run", "nope", "--image", "chelsea"), "method"),
        (("run", "predict", "--model", "nope.onnx", "--image", "chelsea"), "model"),
        (("run", "predict", "--image", str(tmp_path / "missing.png")), "image"),
    ]
    for args, field in cases:
        answer = convlens(*args, "--out", str(tmp_path / "o"), models_dir=models_dir)
        assert answer.returncode == 2, (args, answer.stderr)
        assert f"convlens: error: {field}:" in answer.stderr, (args, answer.stderr)


def test_a_setting_in_the_environment_that_is_not_a_number_exits_non_zero_naming_it(models_dir):
    for name, value, expected in [
        ("CONVLENS_STREAM_BUDGET", "abc", "expected a number, got 'abc'"),
        ("CONVLENS_MAX_RUNNING_JOBS", "2.5", "expected a whole number, got '2.5'"),
    ]:
        answer = subprocess.run(
            [sys.executable, "-m", "convlens", "--models-dir", str(models_dir), "models", "--json"],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, name: value},
        )
        assert answer.returncode == 2, answer.stderr
        assert f"convlens: error: {name}: {expected}" in answer.stderr
        assert "Traceback" not in answer.stderr


def test_run_writes_the_newest_top_classes_of_each_panel_into_result_json(models_dir, tmp_path):
    out = tmp_path / "fgsm"
    answer = convlens(
        "run", "adversarial_attack", "--model", "efficientnet_lite0.pt", "--image", "chelsea",
        "--param", "attack=fgsm", "--out", str(out), "--quiet",
        models_dir=models_dir,
    )  # fmt: skip
    assert answer.returncode == 0, answer.stderr
    result = json.loads((out / "result.json").read_text())
    newest = result["panel_predictions"]
    assert newest["step"] == 1 and set(newest["tops"]) == {"original", "adversarial"}

    # The oracle: the TorchScript module itself on the saved adversarial picture, normalised by the card.
    card = json.loads((models_dir / "efficientnet_lite0.json").read_text())
    net = torch.jit.load(str(models_dir / "efficientnet_lite0.pt")).eval()
    labels = (models_dir / card["labels"]).read_text().splitlines()
    picture = torch.from_numpy(np.load(out / "adversarial.npy")).permute(2, 0, 1)[None].float()
    mean, std = (torch.tensor(card[name]).view(1, 3, 1, 1) for name in ("mean", "std"))
    with torch.no_grad():
        probabilities = net((picture - mean) / std)[0].double().softmax(0)
    values, indices = probabilities.topk(5)
    shown = newest["tops"]["adversarial"]
    assert [entry["class"] for entry in shown] == indices.tolist()
    assert [entry["label"] for entry in shown] == [labels[i] for i in indices.tolist()]
    np.testing.assert_allclose([entry["probability"] for entry in shown], values.numpy(), atol=1e-4)
    # The original's list is the top-5 of the picture the run started from.
    original = [entry["class"] for entry in newest["tops"]["original"]]
    assert original == [entry["index"] for entry in result["predictions"]]
