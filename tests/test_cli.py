"""The `convlens` command as a user runs it, in a subprocess."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

from PIL import Image


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
