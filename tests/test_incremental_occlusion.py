"""Incremental occlusion gives the full computation's numbers.

The region geometry of ONNX graphs (``convlens.models.onnx_regions``) is checked against ONNX Runtime run on
whole inputs: what a change reaches, and which outputs of a crop equal the whole input's. The occlusion
method with ``engine="incremental"`` is checked against ``engine="full"`` on the default model and against
Captum on a random ResNet-18; graphs that cannot be split fall back to the full pass and say why.

Tolerances: 1e-5 on crops and on ResNet-18 maps (float32 noise between Runtime graphs and torch), 1e-5 between
the two engines' maps on the default model (the issue asks for 1e-4; measured ~3e-7).
"""

from __future__ import annotations

import json

import captum.attr as captum_attr
import numpy as np
import onnx
import onnx.helper
import pytest
import torch
from torch import nn

from convlens.events import Result
from convlens.images import to_tensor
from convlens.models.onnx import runtime_session
from convlens.models.onnx_regions import Kernel, Reach, SpatialGraph, subgraph
from convlens.models.store import ModelStore
from convlens_plugins.attribution.incremental_occlusion import incremental_graph
from convlens_plugins.attribution.occlusion import OCCLUSION, window_starts

TOLERANCE = 1e-5
SIZE = 64
MEAN = (0.5, 0.4, 0.3)
STD = (0.2, 0.25, 0.3)


class Knotty(nn.Module):
    """Every kind of local operator the geometry handles: strided, dilated, grouped and unpadded convolutions,
    max and average pooling, BatchNorm, sums of branches, products, channel concatenation."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 5, stride=2, padding=2)
        self.norm = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.dilated = nn.Conv2d(8, 8, 3, padding=2, dilation=2)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.down = nn.Conv2d(16, 12, 3, stride=2)
        self.average = nn.AvgPool2d(2, stride=2)
        self.head = nn.Linear(12, 5)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.norm(self.stem(images))))
        y = nn.functional.silu(self.dilated(x)) + x
        z = torch.cat([y, self.depthwise(y) * 0.5], dim=1)
        z = self.average(nn.functional.hardswish(self.down(z)))
        return self.head(z.mean(dim=(2, 3)))


def export(module: nn.Module, path, size: int = SIZE) -> None:
    batch = {0: torch.export.Dim("batch", min=1)}
    torch.onnx.export(
        module.eval(),
        (torch.rand(2, 3, size, size),),
        str(path),
        dynamo=True,
        dynamic_shapes=(batch,),
        verbose=False,
    )


@pytest.fixture(scope="module")
def knotty(tmp_path_factory) -> SpatialGraph:
    torch.manual_seed(1)
    module = Knotty()
    with torch.no_grad():
        module.norm.running_mean.uniform_(-0.5, 0.5)
        module.norm.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("knotty") / "knotty.onnx"
    export(module, path)
    proto = onnx.load(str(path))
    return SpatialGraph(proto, proto.graph.input[0].name)


def run_piece(graph: SpatialGraph, start: str, stop: str, value: np.ndarray) -> np.ndarray:
    piece = subgraph(graph.proto, start, [stop], {})
    return runtime_session(piece.SerializeToString()).run(None, {start: value})[0]


def test_the_local_part_ends_at_global_pooling(knotty):
    ops = [node.op for node in knotty.local.values()]
    assert {"Conv", "MaxPool", "AveragePool", "Add", "Mul", "Concat"} <= set(ops)
    assert any("ReduceMean" in reason for reason in knotty.why_not.values())
    last = knotty.cuts[-1]
    assert knotty.reach[last][0].stride == 16  # stem 2, max pool 2, down 2, average 2
    assert len(knotty.cuts) >= 4


def test_outputs_outside_the_reach_of_a_change_do_not_change(knotty):
    """Change a block of the image; every output of every local tensor outside ``Reach.changed`` stays put."""
    rng = np.random.default_rng(0)
    height, width = 61, 70  # not multiples of any stride, so right edges are cut off by floor division
    image = rng.standard_normal((1, 3, height, width)).astype(np.float32)
    extents = knotty.extents(height, width)
    for cut in knotty.cuts:
        before = run_piece(knotty, knotty.input_name, cut, image)
        assert before.shape[2:] == extents[cut]
        for y0, x0, side in [(0, 0, 9), (20, 33, 7), (height - 5, width - 12, 12), (30, 0, 1)]:
            changed = image.copy()
            changed[:, :, y0 : y0 + side, x0 : x0 + side] += 3.0
            after = run_piece(knotty, knotty.input_name, cut, changed)
            reach = knotty.reach[cut]
            first_y, end_y = reach[0].changed(y0, min(y0 + side, height), extents[cut][0])
            first_x, end_x = reach[1].changed(x0, min(x0 + side, width), extents[cut][1])
            outside = np.ones(extents[cut], bool)
            outside[first_y:end_y, first_x:end_x] = False
            assert np.array_equal(before[..., outside], after[..., outside]), (cut, y0, x0)
            assert not np.array_equal(before, after)


def test_the_exact_part_of_a_crop_equals_the_whole_inputs_output(knotty):
    """For crops of every piece's input, ``Stage.exact`` marks outputs equal to the whole input's, and
    ``Stage.crop`` finds crops that give a requested range exactly, at a common size where asked."""
    rng = np.random.default_rng(1)
    height, width = 61, 70
    chain = [knotty.input_name, *knotty.cuts[::2], knotty.cuts[-1]]
    chain = list(dict.fromkeys(chain))
    value = rng.standard_normal((1, 3, height, width)).astype(np.float32)
    checked = 0
    for start, stop in zip(chain, chain[1:], strict=False):
        stage = knotty.stage(start, stop)
        whole = run_piece(knotty, start, stop, value)
        size = value.shape[2:]
        stride = (stage.reach[0].stride, stage.reach[1].stride)
        for _ in range(6):
            crop = []
            for axis in (0, 1):
                begin = int(rng.integers(0, size[axis] // stride[axis] + 1)) * stride[axis]
                begin = min(begin, (size[axis] - 1) // stride[axis] * stride[axis])
                crop.append((begin, int(rng.integers(begin + 1, size[axis] + 1))))
            (y0, y1), (x0, x1) = crop
            try:
                first_y, end_y, extent_y = stage.exact(0, y0, y1, size[0])
                first_x, end_x, extent_x = stage.exact(1, x0, x1, size[1])
            except ValueError:  # a crop too small for the piece's kernels
                continue
            part = run_piece(knotty, start, stop, np.ascontiguousarray(value[:, :, y0:y1, x0:x1]))
            assert part.shape[2:] == (extent_y, extent_x)
            oy, ox = y0 // stride[0], x0 // stride[1]
            np.testing.assert_allclose(
                part[:, :, first_y:end_y, first_x:end_x],
                whole[:, :, oy + first_y : oy + end_y, ox + first_x : ox + end_x],
                atol=TOLERANCE,
            )
            checked += (end_y - first_y) * (end_x - first_x)
        out = whole.shape[2:]
        for first, end in [(0, 1), (out[0] // 2, out[0] // 2 + 1), (out[0] - 2, out[0])]:
            first, end = max(0, first), min(out[0], max(end, first + 1))
            for common in (None, value.shape[2] // 2):
                (y0, y1), (x0, x1) = stage.crop(0, first, end, size[0], common), stage.crop(1, 0, 1, size[1])
                assert y0 % stride[0] == 0 and x0 == 0
                if common is not None and common <= size[0]:
                    assert y1 - y0 >= common or y1 == size[0]
                part = run_piece(knotty, start, stop, np.ascontiguousarray(value[:, :, y0:y1, x0:x1]))
                oy = y0 // stride[0]
                np.testing.assert_allclose(
                    part[:, :, first - oy : end - oy, 0:1], whole[:, :, first:end, 0:1], atol=TOLERANCE
                )
        value = whole
    assert checked > 0


def test_size_dependent_padding_is_not_local():
    """``auto_pad=SAME_UPPER`` pads by the input's size, so a crop would pad differently: locality ends."""
    conv = onnx.helper.make_node(
        "Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"
    )
    relu = onnx.helper.make_node("Relu", ["y"], ["z"])
    weight = onnx.numpy_helper.from_array(np.ones((2, 3, 3, 3), np.float32), "w")
    graph = onnx.helper.make_graph(
        [conv, relu],
        "same",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [onnx.helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, None)],
        [weight],
    )
    spatial = SpatialGraph(onnx.helper.make_model(graph), "x")
    assert not spatial.local and not spatial.cuts
    assert "auto_pad=SAME_UPPER" in spatial.why_not["y"]


def test_reach_composes_strides_and_padding():
    stem = Reach().through(Kernel(size=3, stride=2, pad_begin=1, pad_end=1))
    assert stem == Reach(2, -1, 1)
    block = stem.through(Kernel(size=5, stride=1, pad_begin=4, pad_end=4, dilation=2))
    assert block == Reach(2, -9, 9)
    assert block.changed(0, 1, 100) == (0, 5)  # position j reads 2j-9 ... 2j+9
    assert block.changed(50, 52, 100) == (21, 31)


def occlusion_result(convlens_run, model, image, **params) -> Result:
    events = convlens_run(OCCLUSION, model, image, **params)
    assert isinstance(events[-1], Result)
    return events[-1]


@pytest.mark.parametrize("fill", ["grey", "blur"])
def test_the_default_model_gets_the_same_map_incrementally(convlens_run, models_dir, sample_image, fill):
    """Chelsea at 224, window 32: ``auto`` chooses the incremental engine and its map is the full pass's."""
    model = ModelStore([models_dir]).get("efficientnet_lite0")
    params = {"window": 32, "stride": 16, "fill": fill}
    incremental = occlusion_result(convlens_run, model, sample_image, **params)
    full = occlusion_result(convlens_run, model, sample_image, **params, engine="full")
    assert incremental.data["engine"] == "incremental" and full.data["engine"] == "full"
    assert "cut at" in incremental.data["engine_reason"]
    assert full.data["base_probability"] == pytest.approx(incremental.data["base_probability"], abs=TOLERANCE)
    assert np.abs(full.arrays["attribution"]).max() > 0.01
    for name in ("attribution", "probability_grid"):
        np.testing.assert_allclose(incremental.arrays[name], full.arrays[name], atol=TOLERANCE)
    np.testing.assert_array_equal(incremental.arrays["top_class_grid"], full.arrays["top_class_grid"])


@pytest.fixture(scope="module")
def onnx_resnet(resnet18_with_statistics, tmp_path_factory):
    directory = tmp_path_factory.mktemp("incremental-models")
    export(resnet18_with_statistics, directory / "resnet18.onnx", 96)
    card = {"title": "ResNet-18", "input_size": [96, 96], "mean": MEAN, "std": STD}
    (directory / "resnet18.json").write_text(json.dumps(card))
    return ModelStore([directory]).get("resnet18")


def test_a_resnet18_gets_captums_map_incrementally(
    convlens_run, onnx_resnet, resnet18_with_statistics, sample_image
):
    """Random ResNet-18 at 96x96 (max pooling, strided residual blocks): Captum's map, with cropped pieces."""
    window, stride = 16, 8
    result = occlusion_result(
        convlens_run, onnx_resnet, sample_image, window=window, stride=stride, engine="incremental"
    )
    assert result.data["engine"] == "incremental"
    starts = window_starts(96, window, stride)
    plan = incremental_graph(onnx_resnet).plan((96, 96), window, starts, starts)
    assert any(
        (piece.axes[0].stop - piece.axes[0].start).min() < piece.stage.extent(0, 96) for piece in plan.pieces
    )
    inputs = to_tensor(sample_image, (96, 96))
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)

    def probabilities(images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(resnet18_with_statistics((images - mean) / std), dim=1)

    with torch.no_grad():
        oracle = (
            captum_attr.Occlusion(probabilities)
            .attribute(
                inputs,
                sliding_window_shapes=(3, window, window),
                strides=(3, stride, stride),
                baselines=0.5,
                target=result.data["target"],
                perturbations_per_eval=16,
            )[0, 0]
            .numpy()
        )
    assert np.abs(oracle).max() > 1e-4
    np.testing.assert_allclose(result.arrays["attribution"], oracle, atol=TOLERANCE)


class Centred(nn.Module):
    """Subtracts the image's mean colour first: nothing before the global mean is local, so nothing splits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        centred = images - images.mean(dim=(2, 3), keepdim=True)
        return self.head(torch.relu(self.conv(centred)).mean(dim=(2, 3)))


def test_a_graph_that_does_not_split_runs_the_full_pass_and_says_why(convlens_run, tmp_path, sample_image):
    torch.manual_seed(0)
    export(Centred(), tmp_path / "centred.onnx", 32)
    (tmp_path / "centred.json").write_text(json.dumps({"title": "centred", "input_size": [32, 32]}))
    model = ModelStore([tmp_path]).get("centred")
    asked = occlusion_result(convlens_run, model, sample_image, window=8, stride=4, engine="incremental")
    full = occlusion_result(convlens_run, model, sample_image, window=8, stride=4, engine="full")
    assert asked.data["engine"] == "full"
    assert "no tensor that separates" in asked.data["engine_reason"]
    assert "ReduceMean" in asked.data["engine_reason"]
    np.testing.assert_array_equal(asked.arrays["attribution"], full.arrays["attribution"])


def test_a_torch_model_runs_the_full_pass_and_says_why(convlens_run, tiny_model, sample_image):
    result = occlusion_result(
        convlens_run, tiny_model, sample_image, window=16, stride=8, engine="incremental"
    )
    assert result.data["engine"] == "full"
    assert "ONNX" in result.data["engine_reason"]
