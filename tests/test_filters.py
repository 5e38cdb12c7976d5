"""The filters view: convolution weights read from every model format, and the mosaic drawn from them.

Oracles: the eager ``nn.Module``'s parameters and attributes (for the ``.pt``/``.pt2`` files written from it),
``onnx.numpy_helper`` on an ONNX file's initialisers, plain ``torch.jit.load``/``torch.export.load`` state
dicts for the default model's files, and a tiling computed here with numpy.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from convlens.errors import BadInput
from convlens.events import Frame, Result
from convlens.models.default import DEFAULT_MODEL_ID
from convlens.models.store import load_model
from convlens.testing import of_type

RESNET_SIZE = 32


@pytest.fixture(scope="module")
def resnet18_files(tmp_path_factory, resnet18_with_statistics, export_three_formats):
    """``resnet18.onnx``, ``.pt`` (traced), ``.pt2`` and ``resnet18_scripted.pt`` of one seeded ResNet-18."""
    directory = tmp_path_factory.mktemp("resnet18")
    export_three_formats(resnet18_with_statistics, directory, RESNET_SIZE)
    torch.jit.save(torch.jit.script(resnet18_with_statistics), str(directory / "resnet18_scripted.pt"))
    return directory


def eager_convs(module: torch.nn.Module) -> dict[str, torch.nn.Conv2d]:
    return {name: m for name, m in module.named_modules() if isinstance(m, torch.nn.Conv2d)}


def onnx_convs(path) -> list[tuple[onnx.NodeProto, np.ndarray]]:
    """Each Conv node of the file with its weight, read by onnx itself."""
    proto = onnx.load(str(path))
    weights = {tensor.name: numpy_helper.to_array(tensor) for tensor in proto.graph.initializer}
    return [(node, weights[node.input[1]]) for node in proto.graph.node if node.op_type == "Conv"]


def attribute(node: onnx.NodeProto, name: str, default):
    found = [onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name]
    return list(found[0]) if found and isinstance(found[0], list) else (found[0] if found else default)


def test_tiny_model_convolutions_are_its_conv2d_modules(tiny_model):
    convs = eager_convs(tiny_model.module)
    listed = tiny_model.conv_layers()
    assert [conv.name for conv in listed] == list(convs) == ["conv1", "conv2", "conv3"]
    for conv in listed:
        module = convs[conv.name]
        assert conv.shape == tuple(module.weight.shape)
        assert conv.stride == module.stride and conv.dilation == module.dilation
        assert conv.padding == (*module.padding, *module.padding)
        assert conv.groups == module.groups and conv.bn_folded is False
        np.testing.assert_array_equal(tiny_model.conv_weight(conv.name), module.weight.detach().numpy())


@pytest.mark.parametrize("file_name", ["resnet18.pt", "resnet18_scripted.pt", "resnet18.pt2"])
def test_resnet18_torch_files_hold_the_eager_weights(resnet18_files, resnet18_with_statistics, file_name):
    model = load_model(resnet18_files / file_name)
    convs = eager_convs(resnet18_with_statistics)
    listed = model.conv_layers()
    assert [conv.name for conv in listed] == list(convs)
    assert set(convs) <= set(model.layer_names())
    for conv in listed:
        module = convs[conv.name]
        assert (conv.shape, conv.groups, conv.stride, conv.dilation) == (
            tuple(module.weight.shape),
            module.groups,
            module.stride,
            module.dilation,
        )
        assert conv.padding == (*module.padding, *module.padding)
        assert conv.bn_folded is False
        np.testing.assert_array_equal(model.conv_weight(conv.name), module.weight.detach().numpy())


def test_resnet18_onnx_weights_are_its_initialisers_with_batchnorm_folded(
    resnet18_files, resnet18_with_statistics
):
    path = resnet18_files / "resnet18.onnx"
    model = load_model(path)
    nodes = onnx_convs(path)
    listed = model.conv_layers()
    assert len(listed) == len(nodes) == len(eager_convs(resnet18_with_statistics))
    assert {conv.name for conv in listed} <= set(model.layer_names())
    modules = dict(resnet18_with_statistics.named_modules())
    for conv, (node, weight) in zip(listed, nodes, strict=True):
        np.testing.assert_array_equal(model.conv_weight(conv.name), weight)
        assert conv.groups == attribute(node, "group", 1)
        assert list(conv.stride) == attribute(node, "strides", [1, 1])
        assert list(conv.padding) == attribute(node, "pads", [0, 0, 0, 0])
        assert list(conv.dilation) == attribute(node, "dilations", [1, 1])
        # Every conv of a ResNet feeds a BatchNorm, which the exporter folds: W * gamma / sqrt(var + eps).
        eager = modules[node.input[1].removesuffix(".weight")]
        norm = modules[conv.name]
        assert isinstance(norm, torch.nn.BatchNorm2d) and conv.bn_folded is True
        scale = (norm.weight / torch.sqrt(norm.running_var + norm.eps)).detach().numpy()
        folded = eager.weight.detach().numpy() * scale[:, None, None, None]
        np.testing.assert_allclose(weight, folded, rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def default_state_dicts(models_dir):
    """The default model's weights as plain torch loads them from its ``.pt`` and ``.pt2`` files."""
    return {
        "efficientnet_lite0.pt": torch.jit.load(str(models_dir / "efficientnet_lite0.pt")).state_dict(),
        "efficientnet_lite0.pt2": torch.export.load(str(models_dir / "efficientnet_lite0.pt2")).state_dict,
    }


@pytest.mark.parametrize("extension", [".onnx", ".pt", ".pt2"])
def test_default_model_depthwise_layers_are_read_as_such(models_dir, default_state_dicts, extension):
    file_name = DEFAULT_MODEL_ID.removesuffix(".onnx") + extension
    model = load_model(models_dir / file_name)
    # The ONNX file's depthwise convolutions, as onnx reads them: a group per output channel.
    depthwise = {
        node.input[1]: weight
        for node, weight in onnx_convs(models_dir / DEFAULT_MODEL_ID)
        if attribute(node, "group", 1) == weight.shape[0] > 1
    }
    assert len(depthwise) == 16
    listed = [conv for conv in model.conv_layers() if conv.depthwise]
    assert [conv.weight_name for conv in listed] == list(depthwise)
    for conv in listed:
        assert conv.groups == conv.shape[0] and conv.shape[1] == 1
        expected = (
            depthwise[conv.weight_name]
            if extension == ".onnx"
            else default_state_dicts[file_name][conv.weight_name].detach().numpy()
        )
        np.testing.assert_array_equal(model.conv_weight(conv.name), expected)
        assert conv.name == conv.weight_name.removesuffix(".weight")


def expected_tiles(weights: np.ndarray, scale: str) -> np.ndarray:
    """``weights`` min-max scaled to [0, 255]: over the whole layer, or over each filter."""
    if scale == "layer":
        low, high = weights.min(), weights.max()
    else:
        low = weights.min(axis=(1, 2, 3), keepdims=True)
        high = weights.max(axis=(1, 2, 3), keepdims=True)
    return (weights - low) / (high - low) * 255


def cell(picture: np.ndarray, row: int, column: int, size: tuple[int, int], zoom: int) -> np.ndarray:
    """The tile at ``(row, column)`` of a mosaic of ``size`` kernels, ``zoom`` times enlarged, 1 px apart."""
    height, width = size[0] * zoom, size[1] * zoom
    top, left = 1 + row * (height + 1), 1 + column * (width + 1)
    return picture[top : top + height, left : left + width]


def enlarged(tile: np.ndarray, zoom: int) -> np.ndarray:
    """Nearest-neighbour enlargement by Kronecker product with a block of ones."""
    block = np.ones((zoom, zoom) + (1,) * (tile.ndim - 2))
    return np.kron(tile, block)


def filters_result(convlens_run, model, sample_image, **params) -> tuple[Result, Frame]:
    events = convlens_run("filters", model, sample_image, **params)
    return of_type(events, Result)[0], of_type(events, Frame)[-1]


@pytest.mark.parametrize("scale", ["layer", "filter"])
def test_first_layer_tiles_are_its_kernels_in_colour(convlens_run, tiny_model, sample_image, scale):
    result, frame = filters_result(convlens_run, tiny_model, sample_image, scale=scale, zoom=3)
    weights = tiny_model.module.conv1.weight.detach().numpy()
    picture = result.images["filters"]
    np.testing.assert_array_equal(frame.pixels(), picture)
    np.testing.assert_array_equal(result.arrays["weights"], weights)
    assert result.data["view"] == "rgb" and result.data["layer"] == "conv1"
    tiles = expected_tiles(weights, scale).transpose(0, 2, 3, 1)  # input channels 0, 1, 2 as R, G, B
    # 8 filters: a 3x3 grid, its last cell empty (white).
    assert picture.shape == (1 + 3 * 10, 1 + 3 * 10, 3)
    for index in range(9):
        shown = cell(picture, index // 3, index % 3, (3, 3), 3).astype(float)
        expected = enlarged(tiles[index], 3) if index < 8 else np.full((9, 9, 3), 255.0)
        np.testing.assert_allclose(shown, expected, atol=0.5 + 1e-3)
    assert (picture[0] == 255).all() and (picture[:, 10] == 255).all()


def test_deeper_layer_is_a_grid_of_grey_tiles_per_input_channel(convlens_run, tiny_model, sample_image):
    result, _ = filters_result(
        convlens_run,
        tiny_model,
        sample_image,
        layer="conv2",
        scale="filter",
        max_filters=5,
        max_inputs=6,
        zoom=2,
    )
    weights = tiny_model.module.conv2.weight.detach().numpy()
    picture = result.images["filters"]
    assert result.data["view"] == "grey" and result.data["grid"] == [5, 6]
    assert picture.shape == (1 + 5 * 7, 1 + 6 * 7, 3)
    assert (picture[..., 0] == picture[..., 2]).all()
    tiles = expected_tiles(weights, "filter")  # normalised over all 8 input channels, 6 shown
    for row in range(5):
        for column in range(6):
            shown = cell(picture, row, column, (3, 3), 2)[..., 0].astype(float)
            np.testing.assert_allclose(shown, enlarged(tiles[row, column], 2), atol=0.5 + 1e-3)


def test_default_model_depthwise_layer_is_one_tile_per_channel(
    convlens_run, default_model, default_state_dicts, sample_image
):
    layer = "_blocks.1._depthwise_conv"
    weights = default_state_dicts["efficientnet_lite0.pt"][f"{layer}.weight"].detach().numpy()
    result, _ = filters_result(convlens_run, default_model, sample_image, layer=layer, max_filters=512)
    picture, zoom = result.images["filters"], result.data["zoom"]
    count = weights.shape[0]
    columns = int(np.ceil(np.sqrt(count)))
    assert result.data["view"] == "depthwise" and result.data["groups"] == count == 96
    assert result.data["bn_folded"] is False
    assert max(picture.shape) <= 512
    tiles = expected_tiles(weights, "layer")[:, 0]
    np.testing.assert_allclose(np.asarray(result.arrays["weights"]), weights, rtol=1e-6)
    for index in range(count):
        shown = cell(picture, index // columns, index % columns, (3, 3), zoom)[..., 0].astype(float)
        np.testing.assert_allclose(shown, enlarged(tiles[index], zoom), atol=0.5 + 1e-3)


@pytest.mark.parametrize("layer", ["_bn0", "_stem_act", "_blocks.0", "no_such_layer"])
def test_a_layer_that_is_not_a_convolution_is_refused_naming_params_layer(client, layer):
    answer = client.post(
        "/api/jobs",
        json={"method": "filters", "model": DEFAULT_MODEL_ID, "image": "chelsea", "params": {"layer": layer}},
    )
    assert answer.status_code == 400
    assert answer.get_json()["field"] == "params.layer"
    assert layer in answer.get_json()["error"]


def test_tiny_model_refuses_a_rectifier_as_the_layer(convlens_run, tiny_model, sample_image):
    with pytest.raises(BadInput) as error:
        convlens_run("filters", tiny_model, sample_image, layer="relu1")
    assert error.value.field == "params.layer"
