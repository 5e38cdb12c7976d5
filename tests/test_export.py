"""`convlens export`, run as a user runs it: the files it writes load through convlens' ModelStore and give the
eager module's logits; a module that is no classifier is refused naming the field, one that cannot be exported
in some format is reported, the other formats still written."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torchvision

from convlens.models.store import SHIPPED_CARDS, ModelStore

FORMATS = ("onnx", "pt", "pt2")
SIZE = (96, 128)
MEAN = (0.5, 0.4, 0.3)
STD = (0.2, 0.25, 0.3)
IMAGENET_MEAN = torch.tensor((0.485, 0.456, 0.406))
IMAGENET_STD = torch.tensor((0.229, 0.224, 0.225))

NETS = """
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU()
        )
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


class Branchy(Tiny):
    def forward(self, x):
        h = self.features(x)
        if h.mean() > 0:
            h = h * 2
        return self.head(h.mean(dim=(2, 3)))


class Noisy(Tiny):
    def forward(self, x):
        return super().forward(x) + torch.randn(x.shape[0], 10)


class Checked(Tiny):
    def forward(self, x):
        # A guard many nets have: torch.export cannot branch on a value, a trace takes the branch with logits.
        if torch.isnan(x).any():
            raise ValueError("NaN in the input")
        return super().forward(x)


class Spectral(Checked):
    def forward(self, x):
        super().forward(x)
        # fft2 has no ONNX form in the TorchScript-based exporter (opset 17).
        return self.head(torch.fft.fft2(self.features(x)).abs().mean(dim=(2, 3)))


class MapOut(nn.Module):
    def forward(self, x):
        return x * 2
"""


def export(*args: str, nets: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if nets is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(nets.parent), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "convlens", "export", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )


def normalised(images: torch.Tensor) -> torch.Tensor:
    return (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def pictures(size: tuple[int, int]) -> torch.Tensor:
    # Three, not the exporter's two: the files must take any batch.
    return torch.rand(3, 3, *size, generator=torch.Generator().manual_seed(7))


def assert_logits_match(got: np.ndarray, expected: np.ndarray, fmt: str) -> None:
    scale = max(1.0, float(np.abs(expected).max()))
    # ONNX Runtime reorders float sums (README, "Exporting your own model"); the torch formats run the same kernels.
    tolerance = 1e-3 if fmt == "onnx" else 1e-5
    np.testing.assert_allclose(got, expected, rtol=0, atol=tolerance * scale)


@pytest.fixture(scope="module")
def nets(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("user_code") / "convlens_test_nets.py"
    path.write_text(NETS)
    return path


def user_net(nets: Path, attr: str) -> torch.nn.Module:
    spec = importlib.util.spec_from_file_location(nets.stem, nets)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, attr)().eval()


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    """resnet18 exported once by name, with seeded weights from a file, a non-square size and own normalisation."""
    root = tmp_path_factory.mktemp("resnet")
    torch.manual_seed(1)
    eager = torchvision.models.resnet18(weights=None).eval()
    torch.save(eager.state_dict(), root / "weights.pth")
    out = root / "models"
    answer = export(
        "resnet18", "--out", str(out), "--weights", str(root / "weights.pth"),
        "--size", *map(str, SIZE), "--mean", *map(str, MEAN), "--std", *map(str, STD),
    )  # fmt: skip
    return out, answer, eager


def test_resnet18_by_name_writes_the_three_files_and_reports_them(resnet):
    out, answer, _ = resnet
    assert answer.returncode == 0, answer.stderr
    report = json.loads(answer.stdout)
    assert report["errors"] == {}
    assert report["num_classes"] == 1000
    assert report["onnx_exporter"] == "dynamo"
    assert sorted(report["files"]) == sorted(FORMATS)
    for fmt in FORMATS:
        assert report["files"][fmt] == str(out / f"resnet18.{fmt}")
        assert f"convlens: wrote {out / f'resnet18.{fmt}'}" in answer.stderr
        assert 0 <= report["max_abs_diff"][fmt] < 1e-2
    assert sorted(path.name for path in out.iterdir()) == sorted(
        ["resnet18.json", "resnet18.labels.txt", *(f"resnet18.{fmt}" for fmt in FORMATS)]
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_file_loads_through_the_model_store_with_the_eager_logits(resnet, fmt):
    out, answer, eager = resnet
    assert answer.returncode == 0, answer.stderr
    model = ModelStore([out]).get(f"resnet18.{fmt}")
    images = pictures(SIZE)
    with torch.no_grad():
        expected = eager(normalised(images)).numpy()
    assert_logits_match(model.logits(images), expected, fmt)


def test_the_card_reads_back_size_normalisation_and_imagenet_labels(resnet):
    out, answer, _ = resnet
    assert answer.returncode == 0, answer.stderr
    imagenet = (SHIPPED_CARDS / "imagenet_classes.txt").read_text().splitlines()
    for fmt in FORMATS:
        model = ModelStore([out]).get(f"resnet18.{fmt}")
        assert model.input_size == SIZE
        assert model.card.mean == pytest.approx(MEAN)
        assert model.card.std == pytest.approx(STD)
        assert model.labels == imagenet
        assert model.title == "resnet18"


def test_a_users_module_attr_is_exported_with_its_labels(nets, tmp_path):
    labels = tmp_path / "digits.txt"
    labels.write_text("".join(f"digit {i}\n" for i in range(10)))
    out = tmp_path / "models"
    answer = export(
        "convlens_test_nets:Tiny", "--out", str(out), "--size", "32", "--labels", str(labels),
        "--mean", *map(str, MEAN), "--std", *map(str, STD), "--name", "tiny_net", "--title", "A tiny net",
        nets=nets,
    )  # fmt: skip
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout)["errors"] == {}
    eager = user_net(nets, "Tiny")
    images = pictures((32, 32))
    with torch.no_grad():
        expected = eager(normalised(images)).numpy()
    for fmt in FORMATS:
        model = ModelStore([out]).get(f"tiny_net.{fmt}")
        assert (model.title, model.input_size) == ("A tiny net", (32, 32))
        assert model.labels == [f"digit {i}" for i in range(10)]
        assert_logits_match(model.logits(images), expected, fmt)


def test_a_forward_with_data_dependent_control_flow_is_reported_and_the_traces_still_written(nets, tmp_path):
    out = tmp_path / "models"
    answer = export("convlens_test_nets:Branchy", "--out", str(out), "--size", "32", nets=nets)
    assert answer.returncode == 1, answer.stderr
    report = json.loads(answer.stdout)
    assert list(report["files"]) == ["onnx", "pt"]
    assert list(report["errors"]) == ["pt2"]
    assert "convlens: error: pt2: torch.export failed" in answer.stderr
    assert "data-dependent Python control flow" in report["errors"]["pt2"]
    assert not (out / "branchy.pt2").exists()
    assert report["onnx_exporter"] == "torchscript"
    # Each trace holds the example's branch, and says so.
    for fmt in ("onnx", "pt"):
        assert f"convlens: note: {fmt}: Converting a tensor to a Python boolean" in answer.stderr
    assert not [path for path in out.iterdir() if path.name.startswith(".")]
    # The default normalisation, ImageNet's, since none was given.
    images = pictures((32, 32))
    with torch.no_grad():
        expected = user_net(nets, "Branchy")(
            (images - IMAGENET_MEAN.view(1, 3, 1, 1)) / IMAGENET_STD.view(1, 3, 1, 1)
        ).numpy()
    assert_logits_match(ModelStore([out]).get("branchy.pt").logits(images), expected, "pt")


def test_onnx_is_traced_where_torch_export_fails_and_the_report_says_why(nets, tmp_path):
    out = tmp_path / "models"
    answer = export("convlens_test_nets:Checked", "--out", str(out), "--size", "32", nets=nets)
    assert answer.returncode == 1, answer.stderr
    report = json.loads(answer.stdout)
    assert list(report["files"]) == ["onnx", "pt"]
    assert report["errors"]["pt2"].startswith("torch.export failed (GuardOnDataDependentSymNode")
    assert report["onnx_exporter"] == "torchscript"
    assert (
        f"convlens: note: onnx: written by the TorchScript-based exporter (a trace) since {report['errors']['pt2']}"
        in answer.stderr
    )
    assert f"convlens: wrote {out / 'checked.onnx'}" in answer.stderr
    # Opset 17, as onnx2torch reads; any batch, height and width, as the torch.export file's axes.
    assert {o.domain: o.version for o in onnx.load(out / "checked.onnx").opset_import}[""] == 17
    eager = user_net(nets, "Checked")
    model = ModelStore([out]).get("checked.onnx")
    for size in ((32, 32), (48, 40)):
        images = pictures(size)
        with torch.no_grad():
            expected = eager(
                (images - IMAGENET_MEAN.view(1, 3, 1, 1)) / IMAGENET_STD.view(1, 3, 1, 1)
            ).numpy()
        assert_logits_match(model.logits(images), expected, "onnx")


def test_onnx_names_both_exporters_reasons_when_neither_can_write_it(nets, tmp_path):
    out = tmp_path / "models"
    answer = export("convlens_test_nets:Spectral", "--out", str(out), "--size", "32", nets=nets)
    assert answer.returncode == 1, answer.stderr
    report = json.loads(answer.stdout)  # only the JSON: the exporter's graph dump kept off stdout
    assert list(report["files"]) == ["pt"]
    assert report["onnx_exporter"] is None
    assert report["errors"]["pt2"].startswith("torch.export failed (GuardOnDataDependentSymNode")
    assert report["errors"]["onnx"] == (
        f"{report['errors']['pt2']}; the TorchScript-based exporter failed too (UnsupportedOperatorError: "
        "Exporting the operator 'aten::fft_fft2' to ONNX opset version 17 is not supported)"
    )
    for fmt in ("onnx", "pt2"):
        assert f"convlens: error: {fmt}: {report['errors'][fmt]}" in answer.stderr
    assert "Torch IR graph" not in answer.stderr
    assert sorted(path.name for path in out.iterdir()) == ["spectral.json", "spectral.pt"]


def test_files_whose_logits_differ_from_the_eager_modules_are_removed(nets, tmp_path):
    out = tmp_path / "models"
    answer = export("convlens_test_nets:Noisy", "--out", str(out), "--size", "32", nets=nets)
    assert answer.returncode == 1, answer.stderr
    report = json.loads(answer.stdout)
    assert report["files"] == {}
    assert sorted(report["errors"]) == sorted(FORMATS)
    assert report["errors"]["pt"].startswith("its logits differ from the eager module's by up to")
    assert report["max_abs_diff"]["pt"] > 0.1
    assert sorted(path.name for path in out.iterdir()) == ["noisy.json"]


@pytest.mark.parametrize(
    ("spec", "extra", "field", "reason"),
    [
        ("resnet_nineteen", [], "model", "'resnet_nineteen' is not a torchvision classification model"),
        ("nope:Nope", [], "model", "cannot import 'nope'"),
        ("convlens_test_nets:Nope", [], "model", "has no attribute 'Nope'"),
        (
            "convlens_test_nets:MapOut",
            [],
            "model",
            "not an image classifier: for a 1x3x32x32 input it returns 1x3",
        ),
        ("convlens_test_nets:Tiny", ["--labels", "LABELS"], "labels", "3 labels for a model with 10 logits"),
        ("convlens_test_nets:Tiny", ["--size", "32", "0"], "size", "expected a height and width"),
    ],
)
def test_bad_input_exits_2_naming_the_field_and_writes_nothing(nets, tmp_path, spec, extra, field, reason):
    labels = tmp_path / "three.txt"
    labels.write_text("a\nb\nc\n")
    out = tmp_path / "models"
    extra = [str(labels) if arg == "LABELS" else arg for arg in extra]
    answer = export(spec, "--out", str(out), "--size", "32", *extra, nets=nets)
    assert answer.returncode == 2, answer.stderr
    assert f"convlens: error: {field}: " in answer.stderr
    assert reason in answer.stderr
    assert answer.stdout == ""
    assert not out.exists()


def test_an_out_folder_that_is_a_file_is_refused(tmp_path):
    out = tmp_path / "models"
    out.write_text("not a folder")
    answer = export("resnet18", "--out", str(out))
    assert answer.returncode == 2, answer.stderr
    assert f"convlens: error: out: '{out}' is a file, not a folder" in answer.stderr
    assert out.read_text() == "not a folder"
