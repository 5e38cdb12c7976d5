"""The default model: our EfficientNet-Lite0 with the real ImageNet weights, and its ONNX, TorchScript and
torch.export files, which must give the eager model's logits."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convlens.models.default import DEFAULT_MODEL_STEM, SUFFIXES, default_model_files, ensure_default_models
from convlens.models.efficientnet_lite import build_efficientnet_lite0
from convlens.models.store import ModelStore

# Writing and loading the three files takes a minute or more of wall time on two shared cores.
pytestmark = pytest.mark.slow

MODELS = Path(__file__).resolve().parents[1] / "models"
CARD = json.loads((MODELS / f"{DEFAULT_MODEL_STEM}.json").read_text())
LABELS = (MODELS / CARD["labels"]).read_text().splitlines()


def pixels(name: str, size: tuple[int, int] = (224, 224)) -> torch.Tensor:
    """A scikit-image sample photo as convlens models take it: 1x3xHxW in [0, 1], bicubic-resized."""
    import skimage.data

    resized = Image.fromarray(getattr(skimage.data, name)()).resize((size[1], size[0]), Image.BICUBIC)
    return torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255).permute(2, 0, 1)[None]


def photo(name: str, size: tuple[int, int] = (224, 224)) -> torch.Tensor:
    """A scikit-image sample photo as the eager model takes it: :func:`pixels`, ImageNet-normalised."""
    mean = torch.tensor(CARD["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(CARD["std"]).view(1, 3, 1, 1)
    return (pixels(name, size) - mean) / std


@pytest.fixture(scope="module")
def eager():
    return build_efficientnet_lite0()


@pytest.fixture(scope="module")
def chelsea() -> torch.Tensor:
    return photo("chelsea")


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The three files, written once for the module by two `python -m convlens.models.default` runs at once.

    Writing takes ~15 s on two CPU cores (ONNX ~8 s of it, TorchScript and .pt2 under 1 s each).
    """
    models_dir = tmp_path_factory.mktemp("models")
    command = [sys.executable, "-m", "convlens.models.default", str(models_dir)]
    runs = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [run.communicate()[0] for run in runs]
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, output
    return models_dir, "".join(outputs)


def load_onnx(path: Path):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda images: session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]


def load_torchscript(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path))
    return lambda images: module(images).detach().numpy()


def load_exported(path: Path):
    module = torch.export.load(str(path)).module()
    return lambda images: module(images).detach().numpy()


LOADERS = {"onnx": load_onnx, "pt": load_torchscript, "pt2": load_exported}


@pytest.fixture(scope="module")
def loaded(written):
    """Each written file loaded once, as a function from normalised images to logits (numpy)."""
    cache = {}

    def load(suffix: str):
        if suffix not in cache:
            cache[suffix] = LOADERS[suffix](default_model_files(written[0])[suffix])
        return cache[suffix]

    return load


def eager_logits(model, images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(images).numpy()


def test_class_names_are_imagenet_in_index_order():
    assert len(LABELS) == 1000
    assert LABELS[285] == "Egyptian cat"
    assert LABELS[967] == "espresso"


def test_eager_model_sees_an_egyptian_cat_in_chelsea(eager, chelsea):
    probabilities = torch.from_numpy(eager_logits(eager, chelsea)).softmax(1)[0]
    top = probabilities.topk(3)
    assert LABELS[int(top.indices[0])] == "Egyptian cat"
    assert 0.45 <= float(top.values[0]) <= 0.75
    assert {LABELS[int(i)] for i in top.indices[1:]} == {"tabby", "tiger cat"}


def test_eager_model_sees_espresso_in_coffee(eager):
    logits = eager_logits(eager, photo("coffee"))
    assert LABELS[int(logits.argmax())] == "espresso"


def test_two_processes_at_once_write_each_file_once(written):
    models_dir, output = written
    files = default_model_files(models_dir)
    assert all(path.is_file() for path in files.values())
    for path in files.values():
        assert output.count(f"convlens: writing {path} ") == 1, output
    # Nothing half-written left behind: only the three files and the lock.
    assert sorted(p.name for p in models_dir.iterdir()) == sorted(
        [*(p.name for p in files.values()), ".convlens-export.lock"]
    )


def test_writing_again_writes_nothing(written):
    models_dir, _ = written
    before = {path: path.stat().st_mtime_ns for path in models_dir.iterdir()}
    messages: list[str] = []
    assert ensure_default_models(models_dir, log=messages.append) == []
    assert messages == []
    assert {path: path.stat().st_mtime_ns for path in models_dir.iterdir()} == before


@pytest.mark.parametrize("suffix", LOADERS)
def test_file_gives_the_eager_logits(loaded, eager, chelsea, suffix):
    run = loaded(suffix)
    expected = eager_logits(eager, chelsea)
    got = run(chelsea)
    assert got.shape == (1, 1000)
    assert np.abs(got - expected).max() <= 1e-4
    assert LABELS[int(got.argmax())] == "Egyptian cat"


@pytest.mark.parametrize("suffix", LOADERS)
def test_file_takes_other_batch_sizes_and_image_sizes(loaded, eager, suffix):
    run = loaded(suffix)
    images = torch.cat(
        [photo("chelsea", (160, 192)), photo("coffee", (160, 192)), photo("astronaut", (160, 192))]
    )
    got = run(images)
    assert got.shape == (3, 1000)
    assert np.abs(got - eager_logits(eager, images)).max() <= 1e-4


def test_onnx_file_is_one_opset_17_file_that_onnx2torch_converts(written, eager, chelsea):
    import onnx
    import onnx2torch

    path = default_model_files(written[0])["onnx"]
    proto = onnx.load(str(path), load_external_data=False)
    assert {entry.domain: entry.version for entry in proto.opset_import}[""] == 17
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    input_dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert input_dims == ["batch", 3, "height", "width"]
    with torch.no_grad():
        converted = onnx2torch.convert(proto).eval()(chelsea).numpy()
    assert np.abs(converted - eager_logits(eager, chelsea)).max() <= 1e-4


def test_card_default_layer_is_a_module_path_in_every_format(written, eager):
    layer = CARD["default_layer"]
    files = default_model_files(written[0])
    assert layer in dict(eager.named_modules())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        assert layer in dict(torch.jit.load(str(files["pt"])).named_modules())

    program = torch.export.load(str(files["pt2"]))
    stacks = [node.meta.get("nn_module_stack", {}) for node in program.graph.nodes]
    assert any(path == layer for stack in stacks for path, _ in stack.values())

    import onnx

    # The dynamo exporter records each node's module path as "pkg.torch.onnx.name_scopes", e.g.
    # "['', '_blocks.9', '_blocks.9._bn2', '_native_batch_norm_legit_no_training_29']".
    proto = onnx.load(str(files["onnx"]))
    scopes = [
        p.value
        for node in proto.graph.node
        for p in node.metadata_props
        if p.key == "pkg.torch.onnx.name_scopes"
    ]
    assert len(scopes) == len(proto.graph.node)
    assert any(f"'{layer}'" in scope for scope in scopes)


@pytest.fixture(scope="module")
def store(written, tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    """The written files with the checkout's card and labels, loaded as the server loads them."""
    directory = tmp_path_factory.mktemp("store")
    for path in default_model_files(written[0]).values():
        (directory / path.name).symlink_to(path)
    for name in (f"{DEFAULT_MODEL_STEM}.json", CARD["labels"]):
        (directory / name).symlink_to(MODELS / name)
    return ModelStore([directory])


CONVOLUTIONS = [
    "_conv_stem",
    "_blocks.1._expand_conv",
    "_blocks.3._depthwise_conv",
    "_blocks.9._project_conv",
]


def test_every_format_lists_the_same_layers_convolutions_included(store):
    # The ONNX export keeps BatchNorm apart from the convolutions, so a user switching format keeps their layer.
    layers = {suffix: store.get(f"{DEFAULT_MODEL_STEM}.{suffix}").layers() for suffix in SUFFIXES}
    assert layers["onnx"] == layers["pt2"]
    assert layers["pt"] == layers["pt2"]
    for suffix, infos in layers.items():
        ops = {layer.name: layer.op for layer in infos}
        assert ops.get("_conv_head") == "Conv2d", suffix
        assert {ops.get(name) for name in CONVOLUTIONS} == {"Conv2d"}, suffix
        assert ops.get("_blocks.9") == "InvertedResidual", suffix
        assert ops.get("_blocks.9._bn2") == "BatchNorm2d", suffix


def test_onnx_convolution_layers_are_the_eager_convolutions_before_batchnorm(store, eager):
    names = [*CONVOLUTIONS, "_conv_head", "_blocks.9"]
    expected = {}
    handles = [
        eager.get_submodule(name).register_forward_hook(
            lambda module, inputs, output, name=name: expected.__setitem__(name, output.detach())
        )
        for name in names
    ]
    try:
        eager_logits(eager, photo("chelsea"))
    finally:
        for handle in handles:
            handle.remove()
    model = store.get(f"{DEFAULT_MODEL_STEM}.onnx")
    with torch.no_grad():
        activations = model.forward(pixels("chelsea"), names).activations
    for name in names:
        difference = (activations[name] - expected[name]).abs().max() / expected[name].abs().max()
        assert difference <= 1e-5, name


def test_gradients_agree_across_the_three_formats_on_chelsea(store):
    """d logit(Egyptian cat) / d image and d unit(_blocks.9, channel 5) / d image, each format against TorchScript."""
    gradients = {}
    for suffix in SUFFIXES:
        model = store.get(f"{DEFAULT_MODEL_STEM}.{suffix}")
        images = pixels("chelsea").clone().requires_grad_(True)
        result = model.forward(images, ["_blocks.9"])
        (class_gradient,) = torch.autograd.grad(result.logits[0, 285], images, retain_graph=True)
        (unit_gradient,) = torch.autograd.grad(result.activations["_blocks.9"][0, 5].mean(), images)
        gradients[suffix] = (class_gradient, unit_gradient)
    reference = gradients.pop("pt")
    assert all(g.abs().max() > 0 for g in reference)
    for suffix, pair in gradients.items():
        for actual, expected in zip(pair, reference, strict=True):
            assert (actual - expected).abs().max() / expected.abs().max() <= 1e-4, suffix


def test_a_layer_without_logits_is_the_same_value_and_gradient_in_every_format(store):
    """What DeepDream asks for: ``_blocks.9`` alone, no logits, with a unit's gradient, as a full forward gives."""
    for suffix in SUFFIXES:
        model = store.get(f"{DEFAULT_MODEL_STEM}.{suffix}")
        results = {}
        for logits in (True, False):
            images = pixels("chelsea").clone().requires_grad_(True)
            result = model.forward(images, ["_blocks.9"], logits=logits)
            activation = result.activations["_blocks.9"]
            (gradient,) = torch.autograd.grad(activation[0, 5].mean(), images)
            results[logits] = (result.logits, activation.detach(), gradient)
        assert results[False][0] is None and results[True][0] is not None, suffix
        for actual, expected in zip(results[False][1:], results[True][1:], strict=True):
            assert expected.abs().max() > 0, suffix
            assert (actual - expected).abs().max() / expected.abs().max() <= 1e-6, suffix
