"""The model store and its file formats: one ResNet-18, saved as ONNX, torch.export and TorchScript, must
give the eager module's logits, the same named layers, the same activations and the same gradients through
every format; bad files and unknown ids give clear errors."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from convlens.errors import BadInput, NotFound
from convlens.models.base import ModelCard
from convlens.models.module import ModuleModel
from convlens.models.store import ModelStore, load_model

SIZE = 64
"""Small inputs keep ResNet-18 fast on a CPU; the files are exported at this size."""
MEAN = (0.5, 0.4, 0.3)
STD = (0.2, 0.25, 0.3)
LABELS = [f"thing {index}" for index in range(1000)]
BLOCKS = ["layer1", "layer1.0", "layer2", "layer2.1", "layer3", "layer4", "layer4.1"]


def relative_error(actual: torch.Tensor | np.ndarray, expected: torch.Tensor | np.ndarray) -> float:
    actual, expected = torch.as_tensor(actual).double(), torch.as_tensor(expected).double()
    return float((actual - expected).abs().max() / expected.abs().max())


@pytest.fixture(scope="module")
def store_resnet(resnet18_with_statistics) -> torch.nn.Module:
    return resnet18_with_statistics


@pytest.fixture(scope="module")
def store_dir(
    store_resnet: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory, export_three_formats
) -> Path:
    """resnet18.onnx (dynamo exporter), .pt2 (torch.export) and .pt (torch.jit.trace), with one card for all."""
    directory = tmp_path_factory.mktemp("store-models")
    export_three_formats(store_resnet, directory, SIZE)
    (directory / "resnet18-labels.txt").write_text("\n".join(LABELS) + "\n")
    card = {
        "title": "ResNet-18 (random)",
        "input_size": [SIZE, SIZE],
        "mean": list(MEAN),
        "std": list(STD),
        "labels": "resnet18-labels.txt",
        "default_layer": "layer3",
        "source": "torchvision",
    }
    (directory / "resnet18.json").write_text(json.dumps(card))
    return directory


@pytest.fixture(scope="module")
def store(store_dir: Path) -> ModelStore:
    return ModelStore([store_dir])


@pytest.fixture(scope="module")
def store_eager(store_resnet: torch.nn.Module) -> ModuleModel:
    card = ModelCard(title="eager", input_size=(SIZE, SIZE), mean=MEAN, std=STD, labels=LABELS)
    return ModuleModel("eager", store_resnet, card)


@pytest.fixture(scope="module")
def store_images() -> torch.Tensor:
    return torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


FORMATS = ["resnet18.onnx", "resnet18.pt2", "resnet18.pt"]
"""Every file of the fixture directory: one per backend."""


def test_ids_are_file_names_and_a_stem_means_onnx_first(store: ModelStore):
    assert store.ids() == ["resnet18.onnx", "resnet18.pt", "resnet18.pt2"]
    assert store.get("resnet18") is store.get("resnet18.onnx")
    assert store.default_id == "resnet18.onnx"
    assert "resnet18" in store and "resnet50" not in store


def test_card_fields_and_labels_file_are_read(store: ModelStore):
    model = store.get("resnet18.pt2")
    assert model.title == "ResNet-18 (random)"
    assert model.input_size == (SIZE, SIZE)
    assert model.card.mean == MEAN and model.card.std == STD
    assert model.labels == LABELS
    assert model.card.default_layer == "layer3" and model.suggest_layer() == "layer3"
    assert model.card.extra["source"] == "torchvision"
    assert model.to_json()["format"] == "export"
    assert store.get("resnet18.onnx").to_json()["num_classes"] == 1000


@pytest.mark.parametrize("model_id", FORMATS)
def test_logits_of_every_format_match_the_eager_module(store, store_eager, store_images, model_id):
    expected = store_eager.forward(store_images).logits.detach()
    model = store.get(model_id)
    # The ONNX exporter folds BatchNorm into the convolutions, which changes the rounding.
    tolerance = 1e-3 if model.format == "onnx" else 1e-5
    assert relative_error(model.forward(store_images).logits.detach(), expected) < tolerance
    assert relative_error(model.logits(store_images), expected) < tolerance


def test_onnx_runtime_logits_match_onnx2torch(store, store_images):
    model = store.get("resnet18.onnx")
    runtime = model.logits(store_images)
    assert model._session is not None, model._session_failed
    assert relative_error(runtime, model.forward(store_images).logits.detach()) < 1e-4


def test_a_batch_of_five_goes_through_logits_in_chunks(store, store_eager):
    images = torch.rand(5, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    expected = store_eager.forward(images).logits.detach()
    for model_id in ("resnet18.onnx", "resnet18.pt2"):
        logits = store.get(model_id).logits(images, batch_size=2)
        assert logits.shape == (5, 1000)
        assert relative_error(logits, expected) < 1e-3


@pytest.mark.parametrize("model_id", FORMATS)
def test_layers_are_module_paths_with_the_eager_shapes(store, store_eager, model_id):
    eager_shapes = {layer.name: layer.shape for layer in store_eager.layers()}
    layers = store.get(model_id).layers()
    names = [layer.name for layer in layers]
    assert set(BLOCKS) <= set(names)
    for layer in layers:
        assert layer.shape == eager_shapes[layer.name], layer.name
    assert names.index("layer1.0") < names.index("layer1") < names.index("layer2") < names.index("layer4")
    assert {layer.op for layer in layers if layer.name in ("layer1", "layer1.0")} == {
        "Sequential",
        "BasicBlock",
    }


def test_activations_at_named_layers_agree_across_formats(store, store_eager, store_images):
    expected = store_eager.forward(store_images, BLOCKS).activations
    for model_id in ("resnet18.onnx", "resnet18.pt2"):
        activations = store.get(model_id).forward(store_images, BLOCKS).activations
        for name in BLOCKS:
            assert relative_error(activations[name].detach(), expected[name].detach()) < 1e-3, (
                model_id,
                name,
            )


def test_a_layer_later_written_in_place_keeps_its_own_value(store, store_images):
    # ResNet's `out += identity` writes into bn2's output in the eager module and the saved program;
    # the ONNX graph is functional, so it is the oracle for what bn2 computed.
    names = ["layer1.0.bn2", "layer2.0.downsample"]
    onnx = store.get("resnet18.onnx").forward(store_images, names).activations
    export = store.get("resnet18.pt2").forward(store_images, names).activations
    for name in names:
        assert relative_error(export[name].detach(), onnx[name].detach()) < 1e-4, name


def input_gradient(model, images: torch.Tensor, target: int) -> torch.Tensor:
    images = images.clone().requires_grad_(True)
    logits = model.forward(images).logits
    (gradient,) = torch.autograd.grad(logits[:, target].sum(), images)
    return gradient


def test_input_gradients_of_every_format_agree_with_eager(store, store_eager, store_images):
    expected = input_gradient(store_eager, store_images, 7)
    assert expected.abs().max() > 0
    for model_id in ("resnet18.onnx", "resnet18.pt2", "resnet18.pt"):
        assert relative_error(input_gradient(store.get(model_id), store_images, 7), expected) < 1e-3, model_id


def test_gradients_reach_and_leave_a_hidden_layer(store, store_images):
    results = {}
    for model_id in ("resnet18.onnx", "resnet18.pt2", "resnet18.pt"):
        images = store_images.clone().requires_grad_(True)
        result = store.get(model_id).forward(images, ["layer3"])
        activation = result.activations["layer3"]
        (logit_wrt_layer,) = torch.autograd.grad(result.logits[:, 3].sum(), activation, retain_graph=True)
        (unit_wrt_image,) = torch.autograd.grad(activation[:, 5].mean(), images)
        results[model_id] = (logit_wrt_layer, unit_wrt_image)
        assert logit_wrt_layer.shape == activation.shape and logit_wrt_layer.abs().max() > 0
        assert unit_wrt_image.abs().max() > 0
    onnx_layer, onnx_image = results.pop("resnet18.onnx")
    for model_id, (layer_gradient, image_gradient) in results.items():
        assert relative_error(onnx_layer, layer_gradient) < 1e-3, model_id
        assert relative_error(onnx_image, image_gradient) < 1e-3, model_id


def test_unknown_model_is_not_found_naming_the_choices(store):
    with pytest.raises(NotFound) as caught:
        store.get("resnet50")
    assert caught.value.field == "model" and caught.value.status == 404
    assert "resnet18.onnx" in caught.value.reason


def test_unknown_layer_is_a_bad_layer_input(store, store_images):
    for model_id in ("resnet18.onnx", "resnet18.pt2"):
        with pytest.raises(BadInput) as caught:
            store.get(model_id).forward(store_images, ["layer9"])
        assert caught.value.field == "layer"


@pytest.mark.parametrize("name", ["junk.onnx", "junk.pt2", "junk.pt"])
def test_a_file_that_is_not_a_model_is_bad_input_not_a_crash(tmp_path: Path, name: str):
    (tmp_path / name).write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "empty.onnx").write_bytes(b"")
    store = ModelStore([tmp_path])
    assert name in store.ids()
    for model_id in (name, "empty.onnx"):
        with pytest.raises(BadInput) as caught:
            store.get(model_id)
        assert caught.value.field == "model" and model_id in caught.value.reason


def test_a_broken_card_is_bad_input(store_dir: Path, tmp_path: Path):
    (tmp_path / "resnet18.onnx").symlink_to(store_dir / "resnet18.onnx")
    (tmp_path / "resnet18.onnx.json").write_text('{"input_size": "big"}')
    with pytest.raises(BadInput, match="input_size"):
        load_model(tmp_path / "resnet18.onnx")


def test_onnx_without_scope_metadata_names_layers_after_its_nodes(store_dir, store_eager, tmp_path):
    import onnx

    proto = onnx.load(str(store_dir / "resnet18.onnx"))
    for node in proto.graph.node:
        del node.metadata_props[:]
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    model = load_model(tmp_path / "bare.onnx")
    names = model.layer_names()
    node_names = {node.name for node in proto.graph.node}
    assert names and set(names) <= node_names
    relu = next(name for name in names if "relu" in name.lower())
    assert model.forward(torch.rand(1, 3, SIZE, SIZE), [relu]).activations[relu].min() >= 0


def test_onnx_from_the_torchscript_based_exporter_loads(store_resnet, store_eager, store_images, tmp_path):
    import warnings

    path = tmp_path / "legacy.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Weights it shares between nodes arrive through Identity nodes, which onnx2torch cannot read as weights.
        torch.onnx.export(store_resnet, (store_images[:1],), str(path), dynamo=False, opset_version=17)
    card = ModelCard(title="legacy", input_size=(SIZE, SIZE), mean=MEAN, std=STD)
    model = load_model(path, card)
    assert model.fixed_batch == 1
    expected = store_eager.forward(store_images).logits.detach()
    assert relative_error(model.forward(store_images).logits.detach(), expected) < 1e-3
    assert relative_error(model.logits(store_images), expected) < 1e-3
    assert "/layer2/layer2.1/relu_1/Relu" in model.layer_names()


class SmallNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU())
        self.head = torch.nn.Linear(4 * 8 * 8, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).reshape(x.shape[0], -1))


@pytest.mark.parametrize("suffix", [".onnx", ".pt2"])
def test_a_file_fixed_to_batch_one_runs_any_batch_with_a_default_card(tmp_path: Path, suffix: str):
    torch.manual_seed(3)
    module = SmallNet().eval()
    path = tmp_path / f"small{suffix}"
    one = torch.rand(1, 3, 8, 8)
    if suffix == ".onnx":
        torch.onnx.export(module, (one,), str(path), dynamo=True, verbose=False)
    else:
        torch.export.save(torch.export.export(module, (one,)), str(path))
    model = load_model(path)
    assert model.fixed_batch == 1
    assert (model.title, model.input_size, model.labels) == (
        "small",
        (8, 8),
        [f"class {i}" for i in range(6)],
    )
    assert model.card.extra["dynamic_size"] is False
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    expected = module(model.normalise(images)).detach()
    result = model.forward(images, ["features"])
    assert relative_error(result.logits.detach(), expected) < 1e-5
    assert result.activations["features"].shape == (3, 4, 8, 8)
    alone = model.forward(images, ["features"], logits=False).activations["features"]
    assert relative_error(alone, result.activations["features"].detach()) <= 1e-6
    assert relative_error(model.logits(images, batch_size=2), expected) < 1e-5


def test_loading_is_once_per_model_even_from_many_threads(store_dir: Path):
    store = ModelStore([store_dir])
    loaded = []
    threads = [threading.Thread(target=lambda: loaded.append(store.get("resnet18.onnx"))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loaded) == 3 and all(model is loaded[0] for model in loaded)


def test_ensure_default_writes_into_convlens_own_folder_never_a_named_one(tmp_path: Path, monkeypatch):
    import convlens.models.default as default

    calls = []
    monkeypatch.setattr(default, "ensure_default_models", lambda directory, log: calls.append(directory))
    own, named = tmp_path / "own", tmp_path / "named"
    named.mkdir()
    store = ModelStore([named], default_dir=own)
    store.ensure_default(log=print)
    assert calls == [own]
    assert ModelStore([named]).ensure_default(log=print) is None and calls == [own], (
        "no own folder: no writes"
    )
    (named / f"{default.DEFAULT_MODEL_STEM}.onnx").write_bytes(b"")
    assert store.default_id == f"{default.DEFAULT_MODEL_STEM}.onnx"


def test_module_model_keeps_activations_that_later_in_place_ops_would_overwrite():
    from convlens.models.base import ModelCard
    from convlens.models.module import ModuleModel

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    model = ModuleModel("resnet18", net, ModelCard(title="resnet18", input_size=(64, 64)))
    images = torch.rand(1, 3, 64, 64)
    captured = model.forward(images, ["bn1", "layer1.0.bn2"]).activations
    with torch.no_grad():
        stem = net.bn1(net.conv1(model.normalise(images)))
    torch.testing.assert_close(captured["bn1"], stem)
    assert (captured["bn1"] < 0).any(), "the ReLU after bn1 runs in place; the kept value must predate it"
    logits = model.forward(images.requires_grad_(), ["layer1.0.bn2"])
    (grad,) = torch.autograd.grad(logits.logits[0, 3], logits.activations["layer1.0.bn2"])
    assert grad.abs().sum() > 0


HIDDEN = ["layer1.0.relu", "layer1.0.bn2", "layer2"]
"""A ReLU module called twice per block (read at its last call), an output a later ``+=`` overwrites in the
eager module, and a block output."""


def hidden_forward(model, images: torch.Tensor, logits: bool):
    """``forward(images, HIDDEN, logits=logits)`` and the input gradient of one unit of ``layer2``."""
    inputs = images.clone().requires_grad_(True)
    result = model.forward(inputs, HIDDEN, logits=logits)
    (gradient,) = torch.autograd.grad(result.activations["layer2"][:, 5].mean(), inputs)
    return result, gradient


@pytest.mark.parametrize("model_id", [*FORMATS, "eager"])
def test_layers_without_logits_are_the_same_activations_and_gradients(
    store, store_eager, store_images, model_id
):
    model = store_eager if model_id == "eager" else store.get(model_id)
    full, full_gradient = hidden_forward(model, store_images, logits=True)
    cut, cut_gradient = hidden_forward(model, store_images, logits=False)
    assert cut.logits is None and full.logits is not None
    assert set(cut.activations) == set(HIDDEN)
    for name in HIDDEN:
        assert relative_error(cut.activations[name].detach(), full.activations[name].detach()) <= 1e-6, name
    assert full_gradient.abs().max() > 0
    assert relative_error(cut_gradient, full_gradient) <= 1e-6


@pytest.mark.parametrize("model_id", [*FORMATS, "eager"])
def test_no_logits_and_no_layers_is_a_bad_layers_input(store, store_eager, store_images, model_id):
    model = store_eager if model_id == "eager" else store.get(model_id)
    with pytest.raises(BadInput) as caught:
        model.forward(store_images, [], logits=False)
    assert caught.value.field == "layers"


def computing_nodes(graph: torch.fx.Graph) -> set[str]:
    return {node.name for node in graph.nodes if node.op in ("call_function", "call_module", "call_method")}


def ancestors(graph: torch.fx.Graph, name: str) -> set[str]:
    """``name`` and every node it is computed from."""
    by_name = {node.name: node for node in graph.nodes}
    found, stack = set(), [by_name[name]]
    while stack:
        node = stack.pop()
        if node.name not in found:
            found.add(node.name)
            stack.extend(node.all_input_nodes)
    return found


@pytest.mark.parametrize("model_id", ["resnet18.onnx", "resnet18.pt2"])
def test_a_graph_without_logits_computes_only_what_its_layer_needs(store, model_id):
    from convlens.models.fx_taps import first_output, tapped_module

    model = store.get(model_id)
    graph = model.graph_module.graph
    node = {point.name: point.node for point in model.layer_points()}["layer2"]
    full = computing_nodes(tapped_module(model.graph_module, [node]).graph)
    cut_graph = tapped_module(model.graph_module, [node], logits=False).graph
    cut = computing_nodes(cut_graph)
    # Impure nodes stay whatever they feed (torch.export's input guards).
    impure = {n.name for n in cut_graph.nodes if n.name in cut and n.is_impure()}
    assert cut - impure == computing_nodes(graph) & ancestors(graph, node)
    assert first_output(graph).name in full - cut
    assert len(cut) < len(full)


def test_module_model_without_logits_stops_after_its_last_layer_and_removes_its_hooks(
    store_resnet, store_eager, store_images
):
    store_eager.layers()
    ran = []
    handles = [
        store_resnet.get_submodule(name).register_forward_hook(lambda *_, name=name: ran.append(name))
        for name in ("layer2", "layer3", "fc")
    ]
    try:
        store_eager.forward(store_images, HIDDEN, logits=False)
        assert ran == ["layer2"]
        store_eager.forward(store_images, HIDDEN)
        assert ran == ["layer2", "layer2", "layer3", "fc"]
    finally:
        for handle in handles:
            handle.remove()
    assert not any(module._forward_hooks for module in store_resnet.modules())
