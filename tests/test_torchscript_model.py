"""The TorchScript backend: a traced and a scripted ResNet-18 must give the eager module's logits, its module
paths as layers with the eager shapes, the values each module returned, and the eager gradients through them."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from convlens.errors import BadInput
from convlens.models import torchscript
from convlens.models.base import ModelCard
from convlens.models.efficientnet_lite import build_efficientnet_lite0
from convlens.models.torchscript import TorchScriptModel

SIZE = 64
"""Small inputs keep ResNet-18 fast on a CPU."""
CARD = ModelCard(title="resnet18 (random)", input_size=(SIZE, SIZE))
LAYERS = ["conv1", "maxpool", "layer1.0.conv1", "layer1.0", "layer1", "layer2.1", "layer3", "layer4", "fc"]
WRITTEN_LATER = ["bn1", "layer1.0.bn2", "layer3.1.bn2"]
"""Outputs that ResNet's in-place ``relu_`` and ``out += identity`` overwrite after the module returns."""


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach().double(), expected.detach().double()
    return float((actual - expected).abs().max() / expected.abs().max())


def save(module: torch.nn.Module, kind: str, path: Path, example: torch.Tensor) -> Path:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)
        saved = torch.jit.trace(module, (example,)) if kind == "traced" else torch.jit.script(module)
        torch.jit.save(saved, str(path))
    return path


def eager_forward(
    module: torch.nn.Module, images: torch.Tensor, names: Sequence[str]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The oracle: each module's output as it returned, the rest of the forward reading a copy of it.

    A copy downstream keeps later in-place ops off the recorded output, and keeps the logits differentiable
    w.r.t. it.
    """
    modules = dict(module.named_modules())
    recorded: dict[str, torch.Tensor] = {}

    def record(name: str):
        def hook(_module, _inputs, output):
            recorded[name] = output
            return output.clone()

        return hook

    handles = [modules[name].register_forward_hook(record(name)) for name in names]
    try:
        logits = module(normalise(images))
    finally:
        for handle in handles:
            handle.remove()
    return logits, recorded


def normalise(images: torch.Tensor) -> torch.Tensor:
    """What every backend does first, with the card's (here the default) mean and std."""
    mean = torch.tensor(CARD.mean).view(1, 3, 1, 1)
    std = torch.tensor(CARD.std).view(1, 3, 1, 1)
    return (images - mean) / std


@pytest.fixture(scope="module")
def resnet(resnet18_with_statistics) -> torch.nn.Module:
    module = copy.deepcopy(resnet18_with_statistics)
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


@pytest.fixture(scope="module")
def saved(resnet: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("torchscript")
    example = torch.rand(2, 3, SIZE, SIZE)
    return {
        kind: save(resnet, kind, directory / f"resnet18-{kind}.pt", example)
        for kind in ("traced", "scripted")
    }


@pytest.fixture(scope="module", params=["traced", "scripted"])
def model(request: pytest.FixtureRequest, saved: dict[str, Path]) -> TorchScriptModel:
    return TorchScriptModel(f"resnet18-{request.param}", saved[request.param], CARD)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def test_private_torchscript_entry_points_still_exist():
    missing = [name for name in torchscript.PRIVATE_ENTRY_POINTS if not hasattr(torch._C, name)]
    assert not missing, f"this torch has moved {missing}; see convlens.models.torchscript._run_passes"


def test_logits_match_the_eager_module(model, resnet, images):
    expected, _ = eager_forward(resnet, images, [])
    assert (model.forward(images).logits - expected).abs().max() <= 1e-5
    assert (torch.as_tensor(model.logits(images)) - expected).abs().max() <= 1e-5
    assert model.to_json()["format"] == "torchscript"


def test_layers_are_module_paths_in_return_order_with_eager_shapes(model, resnet):
    layers = model.layers()
    names = [layer.name for layer in layers]
    assert {"layer1", "layer1.0", "layer4", "layer1.0.conv1"} <= set(names)
    assert set(names) <= {name for name, _ in resnet.named_modules()}
    assert (
        names.index("layer1.0.conv1")
        < names.index("layer1.0")
        < names.index("layer1")
        < names.index("layer4")
    )
    _, eager = eager_forward(resnet, torch.zeros(1, 3, SIZE, SIZE), names)
    for layer in layers:
        assert layer.shape == tuple(eager[layer.name].shape[1:]), layer.name
    ops = {layer.name: layer.op for layer in layers}
    assert (ops["layer1"], ops["layer1.0"], ops["layer1.0.conv1"]) == ("Sequential", "BasicBlock", "Conv2d")


@pytest.mark.parametrize("chosen", ["some", "all"])
def test_activations_match_the_eager_modules_outputs_on_every_run(model, resnet, images, chosen):
    names = LAYERS if chosen == "some" else model.layer_names()
    expected_logits, expected = eager_forward(resnet, images, names)
    # TorchScript's executor profiles the first runs and optimises the graph after: check past that point.
    for _ in range(3):
        result = model.forward(images.clone().requires_grad_(True), names)
        assert (result.logits - expected_logits).abs().max() <= 1e-5
        for name in names:
            assert (result.activations[name] - expected[name]).abs().max() <= 1e-5, name


def plain_hook_activations(module, images, names):
    """What forward hooks that keep the output object see: later in-place ops overwrite it."""
    kept, handles = {}, []
    for name in names:
        hook = lambda _m, _i, output, name=name: kept.__setitem__(name, output)  # noqa: E731
        handles.append(module.get_submodule(name).register_forward_hook(hook))
    try:
        with torch.no_grad():
            module(normalise(images))
    finally:
        for handle in handles:
            handle.remove()
    return kept


def test_a_layer_later_written_in_place_keeps_the_value_it_returned(model, resnet, images):
    _, expected = eager_forward(resnet, images, WRITTEN_LATER)
    naive = plain_hook_activations(resnet, images, WRITTEN_LATER)
    result = model.forward(images, WRITTEN_LATER)
    for name in WRITTEN_LATER:
        # Plain forward hooks see the later overwrite: the trap is real for these layers.
        assert (naive[name] - expected[name]).abs().max() > 1e-2, name
        assert (result.activations[name] - expected[name]).abs().max() <= 1e-5, name


def test_a_hidden_units_gradient_wrt_the_input_matches_eager(model, resnet, images):
    inputs = images.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(
        model.forward(inputs, ["layer3"]).activations["layer3"][0, 5].sum(), inputs
    )
    eager_inputs = images.clone().requires_grad_(True)
    _, eager = eager_forward(resnet, eager_inputs, ["layer3"])
    (expected,) = torch.autograd.grad(eager["layer3"][0, 5].sum(), eager_inputs)
    assert expected.abs().max() > 0
    assert relative_error(gradient, expected) <= 1e-4


@pytest.mark.parametrize("layer", ["layer3", "layer1.0.bn2"])
def test_a_logits_gradient_wrt_a_hidden_activation_matches_eager(model, resnet, images, layer):
    # Weights are frozen, as in every backend: the graph exists once the input asks for gradients.
    result = model.forward(images.clone().requires_grad_(True), [layer])
    (gradient,) = torch.autograd.grad(result.logits[:, 3].sum(), result.activations[layer])
    eager_logits, eager = eager_forward(resnet, images.clone().requires_grad_(True), [layer])
    (expected,) = torch.autograd.grad(eager_logits[:, 3].sum(), eager[layer])
    assert gradient.shape == expected.shape and expected.abs().max() > 0
    assert relative_error(gradient, expected) <= 1e-4


WITHOUT_LOGITS = [*WRITTEN_LATER, "layer1.0.relu", "layer2"]
"""Layers written in place later, a ReLU called twice per block (read at its last call), a block output."""


def test_layers_without_logits_are_the_eager_values_and_gradients(model, resnet, images):
    eager_inputs = images.clone().requires_grad_(True)
    _, expected = eager_forward(resnet, eager_inputs, WITHOUT_LOGITS)
    (expected_gradient,) = torch.autograd.grad(expected["layer2"][:, 5].mean(), eager_inputs)
    full = model.forward(images, WITHOUT_LOGITS)
    # TorchScript's executor profiles the first runs and optimises the graph after: check past that point.
    for _ in range(3):
        inputs = images.clone().requires_grad_(True)
        result = model.forward(inputs, WITHOUT_LOGITS, logits=False)
        assert result.logits is None
        for name in WITHOUT_LOGITS:
            assert (result.activations[name] - expected[name]).abs().max() <= 1e-5, name
            assert relative_error(result.activations[name], full.activations[name]) <= 1e-6, name
        (gradient,) = torch.autograd.grad(result.activations["layer2"][:, 5].mean(), inputs)
        assert relative_error(gradient, expected_gradient) <= 1e-6


def operator_counts(graph: torch._C.Graph) -> dict[str, int]:
    kinds = [node.kind() for node in graph.nodes()]
    return {
        "conv": sum(kind in ("aten::_convolution", "aten::conv2d") for kind in kinds),
        "linear": kinds.count("aten::linear"),
        "pool": kinds.count("aten::adaptive_avg_pool2d"),
    }


def test_a_graph_without_logits_ends_at_its_last_layer(model):
    full = torchscript.tapped_graph(model.module, ["layer1.0.bn2", "layer2"])
    cut = torchscript.tapped_graph(model.module, ["layer1.0.bn2", "layer2"], logits=False)
    assert operator_counts(full) == {"conv": 20, "linear": 1, "pool": 1}
    # The stem's convolution, layer1's four and layer2's five (its downsample included): nothing after.
    assert operator_counts(cut) == {"conv": 10, "linear": 0, "pool": 0}
    assert len(list(cut.nodes())) < len(list(full.nodes()))


def test_no_logits_and_no_layers_is_a_bad_layers_input(model, images):
    with pytest.raises(BadInput) as caught:
        model.forward(images, [], logits=False)
    assert caught.value.field == "layers"


def test_an_unknown_layer_is_a_bad_layer_input(model, images):
    with pytest.raises(BadInput) as caught:
        model.forward(images, ["layer9"])
    assert caught.value.field == "layer" and "layer9" in caught.value.reason


def test_the_tapped_graph_is_built_once_per_set_of_layers(saved, images, monkeypatch):
    built = []
    original = torchscript.tapped_graph

    def counting(module, paths, fold=True, logits=True, relu_rule="gradient"):
        built.append((tuple(paths), logits, relu_rule))
        return original(module, paths, fold, logits, relu_rule)

    monkeypatch.setattr(torchscript, "tapped_graph", counting)
    model = TorchScriptModel("resnet18", saved["traced"], CARD)
    for layers in (["layer1", "layer2"], ["layer1", "layer2"], ["layer2"], ["layer1", "layer2"]):
        model.forward(images, layers)
    model.forward(images, ["layer2"], logits=False)
    model.forward(images, ["layer2"], logits=False)
    model.forward(images, relu_rule="guided")
    model.forward(images, relu_rule="guided")
    assert built == [
        (("layer1", "layer2"), True, "gradient"),
        (("layer2",), True, "gradient"),
        (("layer2",), False, "gradient"),
        ((), True, "guided"),
    ]


def test_a_file_that_is_not_torchscript_is_bad_input(tmp_path: Path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a zip file" * 100)
    with pytest.raises(BadInput) as caught:
        TorchScriptModel("junk", path, CARD)
    assert caught.value.field == "model" and "junk.pt" in caught.value.reason


# -- small models for the cases ResNet does not show ------------------------------------------------------
class Functional(torch.nn.Module):
    """Nested Sequentials called by index, with functional ReLUs (one in place) between them."""

    def __init__(self) -> None:
        super().__init__()
        conv_bn = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
        self.features = torch.nn.Sequential(conv_bn, torch.nn.Conv2d(4, 6, 3, stride=2))
        self.head = torch.nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.features[0](x))
        x = F.relu(self.features[1](x), inplace=True)
        return self.head(x.mean((2, 3)))


class Flagged(torch.nn.Module):
    """A call that only a plain attribute guards, as in MobileNetV2's ``use_res_connect``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.use_extra = True
        self.extra = torch.nn.Conv2d(4, 4, 1)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.use_extra:
            x = x + self.extra(x)
        return self.head(x.mean((2, 3)))


class View(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)


class Aliased(torch.nn.Module):
    """A module output that a later in-place op changes through another name for the same memory."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.view = View()
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        z = self.view(y)
        y.add_(1.0)
        return self.head((z * 2).mean((2, 3)))


def small_model(
    module: torch.nn.Module, kind: str, tmp_path: Path
) -> tuple[torch.nn.Module, TorchScriptModel]:
    torch.manual_seed(0)
    module = module.eval()
    path = save(module, kind, tmp_path / f"{type(module).__name__}-{kind}.pt", torch.rand(2, 3, 16, 16))
    return module, TorchScriptModel(path.stem, path, ModelCard(title="small", input_size=(16, 16)))


@pytest.mark.parametrize("kind", ["traced", "scripted"])
def test_functional_relus_and_nested_sequentials(kind, tmp_path):
    module, model = small_model(Functional(), kind, tmp_path)
    assert model.layer_names() == ["features.0.0", "features.0.1", "features.0", "features.1", "head"]
    images = torch.rand(2, 3, 16, 16).requires_grad_(True)
    names = model.layer_names()
    result = model.forward(images, names)
    expected_logits, expected = eager_forward(module, images, names)
    assert (result.logits - expected_logits).abs().max() <= 1e-5
    for name in names:
        assert (result.activations[name] - expected[name]).abs().max() <= 1e-5, name
    (gradient,) = torch.autograd.grad(result.activations["features.1"].sum(), images)
    (eager_gradient,) = torch.autograd.grad(expected["features.1"].sum(), images)
    assert relative_error(gradient, eager_gradient) <= 1e-4


def test_a_call_behind_a_plain_attribute_is_a_layer_of_the_scripted_model(tmp_path):
    module, model = small_model(Flagged(), "scripted", tmp_path)
    assert model.layer_names() == ["conv", "extra", "head"]
    images = torch.rand(2, 3, 16, 16)
    _, expected = eager_forward(module, images, ["extra"])
    assert (model.forward(images, ["extra"]).activations["extra"] - expected["extra"]).abs().max() <= 1e-5


@pytest.mark.parametrize("kind", ["traced", "scripted"])
def test_memory_written_under_another_name_leaves_a_snapshot_and_the_logits_right(kind, tmp_path):
    module, model = small_model(Aliased(), kind, tmp_path)
    images = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        returned = module.conv(normalise(images))
        expected_logits = module(normalise(images))
    result = model.forward(images, ["view"])
    assert (result.activations["view"] - returned).abs().max() <= 1e-5
    assert (result.logits - expected_logits).abs().max() <= 1e-5
    # Without logits, the write after the tap is cut off with the rest, so the value is simply what returned.
    alone = model.forward(images, ["view"], logits=False)
    assert alone.logits is None
    assert (alone.activations["view"] - returned).abs().max() <= 1e-5


def test_a_frozen_module_has_logits_and_no_layers(tmp_path):
    torch.manual_seed(0)
    module = Functional().eval()
    path = tmp_path / "frozen.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.freeze(torch.jit.script(module)), str(path))
    model = TorchScriptModel("frozen", path, ModelCard(title="frozen", input_size=(16, 16)))
    images = torch.rand(2, 3, 16, 16)
    assert model.layers() == [] and model.capabilities == frozenset({"gradients", "relu_rules"})
    with torch.no_grad():
        expected = module(normalise(images))
    assert (model.forward(images).logits - expected).abs().max() <= 1e-5


def test_traced_efficientnet_lite0_has_its_blocks_as_layers(tmp_path):
    module = build_efficientnet_lite0(pretrained=False).eval()
    path = save(module, "traced", tmp_path / "efficientnet_lite0.pt", torch.rand(2, 3, SIZE, SIZE))
    model = TorchScriptModel("efficientnet_lite0.pt", path, ModelCard(title="lite0", input_size=(SIZE, SIZE)))
    names = model.layer_names()
    assert {f"_blocks.{i}" for i in range(16)} | {"_conv_head"} <= set(names)
    chosen = ["_stem_act", "_blocks.0", "_blocks.5._bn2", "_blocks.15", "_conv_head"]
    images = torch.rand(2, 3, SIZE, SIZE)
    expected_logits, expected = eager_forward(module, images, chosen)
    result = model.forward(images, chosen)
    assert (result.logits - expected_logits).abs().max() <= 1e-5
    for name in chosen:
        assert (result.activations[name] - expected[name]).abs().max() <= 1e-5, name


def test_the_logits_gradient_wrt_a_layer_survives_repeated_runs(models_dir):
    # From its second run TorchScript's optimising executor merged the default model's head into one
    # differentiable graph and cut d logit / d _head_act; the gradient must survive any number of runs.
    from convlens.models.store import ModelStore

    model = ModelStore([models_dir]).get("efficientnet_lite0.pt")
    for _ in range(4):
        inputs = torch.rand(1, 3, 96, 96, requires_grad=True)
        result = model.forward(inputs, ["_head_act"])
        (gradient,) = torch.autograd.grad(result.logits[0, 285], result.activations["_head_act"])
        assert gradient.abs().max() > 0
