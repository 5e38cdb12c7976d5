"""Receptive fields: a unit's box must be exactly where its input gradient lives, in every model format.

The oracle is the gradient of one unit w.r.t. the input picture: zero outside the unit's receptive field, by
construction, and non-zero up to its edges. One picture can hide an edge (a ReLU that is off, a max pool that
picked another pixel of its window), so the support is the union over a batch of random pictures, and each
unit's activation is weighted over channels with random positive weights so that no channel's gradient is
needed alone. The bounding box of that support must equal the computed box clipped to the picture: nothing
outside it, and something on each of its four edges. (One random picture already sufficed for every unit tested
here; six leave room.) Units at the centre and at two corners, so that clipping shows.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convlens.errors import BadInput
from convlens.models.base import Model, ModelCard
from convlens.models.module import ModuleModel
from convlens.models.onnx import OnnxModel
from convlens.models.receptive_field import Box, field_box, receptive_field, receptive_fields, unit_box
from convlens.models.store import ModelStore
from convlens.testing import make_tiny_model

RESNET_SIZE = 128
"""Large enough that layer1 and layer2 units have fields inside the picture, small enough for a CPU."""
PICTURES = 6


def gradient_box(model: Model, layer: str, row: int, col: int, size: tuple[int, int]) -> Box:
    """The bounding box of the input pixels where the unit's gradient is non-zero for some random picture."""
    generator = torch.Generator().manual_seed(row * 1000 + col)
    pictures = torch.rand(PICTURES, 3, *size, generator=generator, requires_grad=True)
    activation = model.forward(pictures, [layer], logits=False).activations[layer]
    weights = torch.rand(activation.shape[1], generator=generator) + 0.5
    (activation[:, :, row, col] * weights).sum().backward()
    rows, cols = torch.nonzero(pictures.grad.abs().sum(dim=(0, 1)), as_tuple=True)
    return Box(int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1)


def assert_boxes_match_gradients(model: Model, layers: list[str], size: tuple[int, int]) -> None:
    for layer in layers:
        field = receptive_field(model, layer, size)
        with torch.no_grad():
            height, width = (
                model.forward(torch.zeros(1, 3, *size), [layer], logits=False).activations[layer].shape[2:]
            )
        for row, col in [(height // 2, width // 2), (0, 0), (height - 1, width - 1)]:
            box = unit_box(field, row, col, size)
            assert gradient_box(model, layer, row, col, size) == Box(
                box.top, box.left, box.bottom, box.right
            ), f"{model.format} {layer} unit ({row}, {col})"


# -- a hand-built net with a known answer ---------------------------------------------------------------
class Branches(nn.Module):
    """Two 3x3 convs padded on opposite sides, added: the join reads the union of their fields."""

    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Sequential(nn.ZeroPad2d((2, 0, 2, 0)), nn.Conv2d(4, 4, 3))
        self.right = nn.Sequential(nn.ZeroPad2d((0, 2, 0, 2)), nn.Conv2d(4, 4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.left(x) + self.right(x)


def handmade() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(
        # TF's "same" padding for a 3x3 stride-2 conv on an even size: one pixel on the right and bottom only.
        nn.ZeroPad2d((0, 1, 0, 1)),
        nn.Conv2d(3, 4, 3, stride=2),
        Branches(),
        nn.Conv2d(4, 4, 3, padding=2, dilation=2),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, (1, 3), padding=(0, 1)),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()


# Worked by hand, per axis (size, jump, start) from the input's (1, 1, 0), with Araujo et al.'s
# r += d(k-1)j, u -= pj, j *= s; height and width agree until the last conv, whose kernel is 1x3.
HANDMADE_FIELDS = {
    "1": ((3, 3), (2, 2), (0, 0)),  # k3 s2 after padding 0 on top/left
    "2.left": ((7, 7), (2, 2), (-4, -4)),  # k3 on 2 padded pixels: u = 0 - 2*2
    "2.right": ((7, 7), (2, 2), (0, 0)),
    "2": ((11, 11), (2, 2), (-4, -4)),  # union of [-4, 3) and [0, 7)
    "3": ((19, 19), (2, 2), (-8, -8)),  # k3 d2 p2: r = 11 + 2*2*2, u = -4 - 2*2
    "4": ((21, 21), (4, 4), (-8, -8)),  # max pool k2 s2
    "5": ((21, 29), (4, 4), (-8, -12)),  # k(1, 3) p(0, 1): only the width grows, r = 21 + 2*4, u = -8 - 4
}
HANDMADE_SIZE = (32, 32)


@pytest.fixture(scope="module")
def handmade_models(tmp_path_factory) -> dict[str, Model]:
    module = handmade()
    card = ModelCard(title="handmade", input_size=HANDMADE_SIZE, labels=["a", "b", "c"])
    path = tmp_path_factory.mktemp("handmade") / "handmade.onnx"
    torch.onnx.export(module, (torch.rand(1, 3, *HANDMADE_SIZE),), str(path), dynamo=True, verbose=False)
    return {"module": ModuleModel("handmade", module, card), "onnx": OnnxModel("handmade", path, card)}


@pytest.mark.parametrize("fmt", ["module", "onnx"])
def test_a_handmade_net_has_the_fields_worked_by_hand(handmade_models, fmt):
    model = handmade_models[fmt]
    for layer, (size, jump, start) in HANDMADE_FIELDS.items():
        if fmt == "onnx" and layer not in model.layer_names():
            continue  # the ONNX file names no layer for a module that is a single padding node
        field = receptive_field(model, layer)
        assert (field.size, field.jump, field.start) == (size, jump, start), layer
    assert {"2", "5"} <= set(model.layer_names())


def tf_style_onnx(path) -> OnnxModel:
    """Two 3x3 stride-2 convs as TF exporters write "same" padding: in the Conv's own pads, bottom/right only."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.random((4, channels, 3, 3), dtype=np.float32), f"w{i}")
        for i, channels in enumerate((3, 4))
    ]
    same = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [0, 0, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c1"], name="c1", **same),
        helper.make_node("Relu", ["c1"], ["r1"], name="r1"),
        helper.make_node("Conv", ["r1", "w1"], ["c2"], name="c2", **same),
        helper.make_node("GlobalAveragePool", ["c2"], ["pooled"], name="pooled"),
        helper.make_node("Flatten", ["pooled"], ["y"], name="flat"),
    ]
    graph = helper.make_graph(
        nodes,
        "tf_same",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        weights,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return OnnxModel("tf_same", path, ModelCard(title="tf_same", input_size=(32, 32)))


def test_tf_same_padding_in_an_onnx_conv_starts_the_field_at_the_top_left(tmp_path):
    model = tf_style_onnx(tmp_path / "tf_same.onnx")
    # No padding on top or left: u stays 0; r = 3, then 3 + 2*2 = 7; j = 2, then 4.
    fields = receptive_fields(model, ["c1", "c2"])
    assert [(f.size, f.jump, f.start) for f in fields.values()] == [
        ((3, 3), (2, 2), (0, 0)),
        ((7, 7), (4, 4), (0, 0)),
    ]
    assert_boxes_match_gradients(model, ["c1", "c2"], (32, 32))


def test_a_handmade_net_has_boxes_where_its_gradients_are(handmade_models):
    assert_boxes_match_gradients(handmade_models["module"], list(HANDMADE_FIELDS), HANDMADE_SIZE)


def test_a_box_is_clipped_at_the_picture_and_says_so(handmade_models):
    field = receptive_field(handmade_models["module"], "5")
    # Unit (i, j) covers rows [-8 + 4i, 13 + 4i) and columns [-12 + 4j, 17 + 4j) of the 32x32 picture.
    assert unit_box(field, 0, 0) == Box(0, 0, 13, 17, clipped=True)
    assert unit_box(field, 3, 3) == Box(4, 0, 25, 29, clipped=False)
    assert unit_box(field, 4, 4) == Box(8, 4, 29, 32, clipped=True)
    assert field_box(field, 4, 4) == Box(8, 4, 29, 33)


# -- the default model, ResNet-18 in every format, the tiny model ---------------------------------------
def test_the_default_model_has_boxes_where_its_gradients_are(default_model):
    layers = ["_conv_stem", "_blocks.1", "_blocks.3", "_blocks.5", "_blocks.9", "_head_act"]
    assert_boxes_match_gradients(default_model, layers, tuple(default_model.input_size))


@pytest.fixture(scope="module")
def resnet_models(resnet18_with_statistics, tmp_path_factory, export_three_formats) -> dict[str, Model]:
    directory = tmp_path_factory.mktemp("receptive-field-resnet")
    export_three_formats(resnet18_with_statistics, directory, RESNET_SIZE)
    store = ModelStore([directory])
    return {fmt: store.get(f"resnet18.{fmt}") for fmt in ("onnx", "pt", "pt2")}


@pytest.mark.parametrize("fmt", ["onnx", "pt", "pt2"])
def test_resnet18_has_boxes_where_its_gradients_are_in_every_format(resnet_models, fmt):
    layers = ["bn1", "maxpool", "layer1", "layer2.0", "layer3"]
    assert_boxes_match_gradients(resnet_models[fmt], layers, (RESNET_SIZE, RESNET_SIZE))


def test_resnet18_fields_agree_across_formats_with_the_published_sizes(resnet_models):
    size = (RESNET_SIZE, RESNET_SIZE)
    layers = ["layer1", "layer2", "layer3", "layer4"]
    fields = {fmt: receptive_fields(model, layers, size) for fmt, model in resnet_models.items()}
    assert fields["onnx"] == fields["pt"] == fields["pt2"]
    # By hand from torchvision's ResNet-18: conv1 7x7/2 gives r = 7, j = 2; the 3x3/2 max pool r = 7 + 2*2 = 11,
    # j = 4; each 3x3 conv adds 2j (shortcuts add nothing): layer1 11 + 4*8 = 43, layer2 (j = 8 after its first
    # conv) 43 + 8 + 3*16 = 99, layer3 99 + 16 + 3*32 = 211, layer4 211 + 32 + 3*64 = 435.
    assert [fields["onnx"][name].size for name in layers] == [(43, 43), (99, 99), (211, 211), (435, 435)]
    assert [fields["onnx"][name].jump for name in layers] == [(4, 4), (8, 8), (16, 16), (32, 32)]


def test_the_tiny_model_has_boxes_where_its_gradients_are():
    model = make_tiny_model()
    assert_boxes_match_gradients(model, ["conv1", "relu2", "conv3"], tuple(model.input_size))


# -- what has no receptive field ----------------------------------------------------------------------------
def test_a_layer_after_global_pooling_is_refused_by_name(resnet_models):
    for layer in ["avgpool", "fc"]:
        with pytest.raises(BadInput, match=f"{layer}.*no spatial extent") as error:
            receptive_field(resnet_models["pt2"], layer)
        assert error.value.field == "layer"


class ChannelShuffle(nn.Module):
    """ShuffleNet's shuffle: a reshape and a transpose that keep every position where it was."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


@pytest.mark.parametrize(
    ("middle", "reason"),
    [
        (nn.ConvTranspose2d(4, 4, 3, stride=2), "transposed convolution"),
        (ChannelShuffle(), "View of a spatial map"),
    ],
)
def test_an_operator_it_cannot_follow_is_named(middle, reason):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 4, 3), middle, nn.Flatten(), nn.LazyLinear(2))
    module(torch.zeros(1, 3, 16, 16))
    model = ModuleModel("odd", module.eval(), ModelCard(title="odd", input_size=(16, 16), labels=["a", "b"]))
    assert receptive_field(model, "0").size == (3, 3)
    with pytest.raises(BadInput, match=f"'1'.*{reason}") as error:
        receptive_field(model, "1")
    assert error.value.field == "layer"


def test_adaptive_pooling_is_a_plain_pooling_where_the_sizes_divide():
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.AdaptiveAvgPool2d(4),
        nn.AdaptiveAvgPool2d(3),
        nn.Flatten(),
        nn.LazyLinear(2),
    )
    module(torch.zeros(1, 3, 16, 16))
    model = ModuleModel(
        "adaptive", module.eval(), ModelCard(title="adaptive", input_size=(16, 16), labels=["a", "b"])
    )
    # 16 -> 4 cells is a 4x4 pooling of stride 4: r = 3 + 3*1, j = 4, u = -1.
    field = receptive_field(model, "1")
    assert (field.size, field.jump, field.start) == ((6, 6), (4, 4), (-1, -1))
    assert_boxes_match_gradients(model, ["1"], (16, 16))
    with pytest.raises(BadInput, match="'2'.*AdaptiveAvgPool2D to \\[3, 3\\] cells of a \\[4, 4\\] map"):
        receptive_field(model, "2")


class Excitation(nn.Module):
    """Squeeze-and-excitation: each position is scaled by a summary of the whole map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x.mean(dim=(2, 3), keepdim=True))


def test_a_unit_that_reads_a_global_summary_says_so():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), Excitation(), nn.Flatten(), nn.LazyLinear(2))
    module(torch.zeros(1, 3, 8, 8))
    model = ModuleModel("se", module.eval(), ModelCard(title="se", input_size=(8, 8), labels=["a", "b"]))
    local, excited = receptive_field(model, "0"), receptive_field(model, "1")
    assert not local.global_context and excited.global_context
    assert (excited.size, excited.jump, excited.start) == ((3, 3), (1, 1), (-1, -1))
    # The oracle agrees: a unit of the excited layer has a gradient everywhere, one before it only nearby.
    assert gradient_box(model, "1", 4, 4, (8, 8)) == Box(0, 0, 8, 8)
    assert gradient_box(model, "0", 4, 4, (8, 8)) == Box(3, 3, 6, 6)
