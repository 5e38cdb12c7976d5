"""The feature store: codes equal a fresh forward, are reused from disk, follow a changed file, survive a stop
and a kill -9, and the top activations equal a brute-force search over every activation.

Oracles: the tiny model's own ``nn.Sequential`` cut before the layer's successor, or ONNX Runtime run directly
on the exported file with the layer's tensor added as a graph output; the images resized by PIL here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from PIL import Image
from skimage import data

from convlens.datasets import FolderDataset
from convlens.errors import BadInput
from convlens.events import Progress
from convlens.features import FeatureStore
from convlens.models.store import ModelStore
from convlens.testing import make_tiny_model

IMAGES = 40
SIZE = 64
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def write_images(folder: Path, count: int = IMAGES) -> Path:
    """``count`` PNG crops of varied size and place from two photographs, in two class folders."""
    photos = {"cat": data.chelsea(), "coffee": data.coffee()}
    rng = np.random.default_rng(0)
    for index in range(count):
        label = "cat" if index % 2 else "coffee"
        photo = photos[label]
        height, width = rng.integers(40, 160, size=2)
        top, left = rng.integers(0, photo.shape[0] - height), rng.integers(0, photo.shape[1] - width)
        (folder / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo[top : top + height, left : left + width]).save(
            folder / label / f"{index:03d}.png"
        )
    return folder


def pixels_of(dataset: FolderDataset) -> np.ndarray:
    """N x 3 x 64 x 64 float32: each file resized by PIL (bicubic), in [0, 1]."""
    images = []
    for item in dataset.items():
        with Image.open(dataset.path / item.key) as image:
            resized = image.convert("RGB").resize((SIZE, SIZE), Image.BICUBIC)
        images.append(np.asarray(resized, dtype=np.float32).transpose(2, 0, 1) / 255.0)
    return np.stack(images)


def normalised(pixels: np.ndarray) -> np.ndarray:
    return (pixels - np.reshape(MEAN, (1, 3, 1, 1))) / np.reshape(STD, (1, 3, 1, 1))


def sequential_until(model, layer: str, pixels: np.ndarray) -> np.ndarray:
    """The tiny net's own modules up to and including ``layer``, on normalised pixels."""
    names = [name for name, _ in model.module.named_children()]
    cut = model.module[: names.index(layer) + 1]
    with torch.no_grad():
        return cut(torch.from_numpy(normalised(pixels).astype(np.float32))).numpy()


class CountingForwards:
    """Counts the images a model's forward is asked for."""

    def __init__(self, model) -> None:
        self.images = 0
        self._forward = model.forward
        model.forward = self

    def __call__(self, images, *args, **kwargs):
        self.images += images.shape[0]
        return self._forward(images, *args, **kwargs)


@pytest.fixture
def dataset(tmp_path: Path) -> FolderDataset:
    return FolderDataset(write_images(tmp_path / "crops"), id="crops")


@pytest.fixture
def store(tmp_path: Path) -> FeatureStore:
    return FeatureStore(tmp_path / "features", chunk_size=8)


def test_default_codes_are_what_the_classifier_reads(store, dataset):
    model = make_tiny_model()
    features = store.features(model, dataset, batch_size=6)
    assert features.layer == "flatten" and features.engine == "torch"
    expected = sequential_until(model, "flatten", pixels_of(dataset))
    assert features.codes.shape == (IMAGES, 32)
    np.testing.assert_allclose(features.codes, expected, rtol=1e-5, atol=1e-5)


def test_a_second_request_reads_the_store_without_a_forward(tmp_path, dataset):
    model = make_tiny_model()
    counter = CountingForwards(model)
    first = FeatureStore(tmp_path / "features").features(model, dataset, "relu2")
    assert counter.images == IMAGES
    same = make_tiny_model()  # another instance, as another job or process would load it
    second_counter = CountingForwards(same)
    again = FeatureStore(tmp_path / "features").features(same, dataset, "relu2")
    assert second_counter.images == 0
    np.testing.assert_array_equal(again.codes, first.codes)
    assert again.path == first.path


def test_a_changed_file_is_noticed(store, dataset):
    model = make_tiny_model()
    before = store.features(model, dataset, "relu3").codes
    changed = dataset.path / dataset.items()[5].key
    Image.fromarray(data.astronaut()[100:180, 150:250]).save(changed)
    later = os.stat(changed).st_mtime_ns + 10**9  # a clock coarser than the rewrite still sees a new file
    os.utime(changed, ns=(later, later))
    counter = CountingForwards(model)
    after = store.features(model, FolderDataset(dataset.path, id="crops"), "relu3").codes
    assert counter.images == IMAGES
    expected = sequential_until(model, "relu3", pixels_of(dataset)).mean(axis=(2, 3))
    np.testing.assert_allclose(after, expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(after[5], before[5])
    np.testing.assert_allclose(np.delete(after, 5, 0), np.delete(before, 5, 0), rtol=1e-5, atol=1e-6)


def test_a_file_changed_during_the_pass_is_refused_and_nothing_mixed_is_kept(store, dataset):
    model = make_tiny_model()
    steps = store.extract(model, dataset, "relu3", batch_size=4)
    next(steps)
    changed = dataset.path / dataset.items()[30].key
    Image.fromarray(data.astronaut()[:90, :90]).save(changed)
    later = os.stat(changed).st_mtime_ns + 10**9
    os.utime(changed, ns=(later, later))
    with pytest.raises(BadInput) as error:
        list(steps)
    assert error.value.field == "dataset"
    assert list(store.root.iterdir()) == []
    codes = store.features(model, FolderDataset(dataset.path, id="crops"), "relu3").codes
    expected = sequential_until(model, "relu3", pixels_of(dataset)).mean(axis=(2, 3))
    np.testing.assert_allclose(codes, expected, rtol=1e-5, atol=1e-5)


def test_a_file_deleted_during_the_pass_is_an_error_naming_the_dataset(store, dataset):
    steps = store.extract(make_tiny_model(), dataset, "relu3", batch_size=4)
    next(steps)
    (dataset.path / dataset.items()[30].key).unlink()
    with pytest.raises(BadInput) as error:
        list(steps)
    assert error.value.field == "dataset" and dataset.items()[30].key in error.value.reason


def test_a_stopped_pass_resumes_where_it_stopped(store, dataset):
    model = make_tiny_model()
    steps = store.extract(model, dataset, "relu3", batch_size=4)
    for progress in steps:
        if progress.step >= 12:
            break
    steps.close()  # what a stopped job does to its method's generator
    counter = CountingForwards(model)
    features = store.features(model, dataset, "relu3", batch_size=4)
    assert counter.images == IMAGES - 12
    expected = sequential_until(model, "relu3", pixels_of(dataset)).mean(axis=(2, 3))
    np.testing.assert_allclose(features.codes, expected, rtol=1e-5, atol=1e-5)


CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from convlens.datasets import FolderDataset
    from convlens.features import FeatureStore
    from convlens.testing import make_tiny_model

    class Stalling(FolderDataset):
        def load(self, index):
            if index >= 20:
                sys.stdin.readline()  # blocks: the parent never writes, it kills
            return super().load(index)

    root, folder = sys.argv[1:3]
    store = FeatureStore(Path(root), chunk_size=8)
    for progress in store.extract(make_tiny_model(), Stalling(Path(folder), id="crops"), "relu3", batch_size=4):
        print(progress.step, flush=True)
    """
)


def test_a_killed_process_leaves_a_store_that_resumes(tmp_path, dataset):
    root = tmp_path / "features"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root), str(dataset.path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        # Progress 16 is yielded after the second chunk of 8 is on disk; then images from 20 on never load.
        assert next(int(line) for line in iter(child.stdout.readline, "") if int(line) >= 16) == 16
    finally:
        child.kill()
        child.wait()
    model = make_tiny_model()
    counter = CountingForwards(model)
    features = FeatureStore(root, chunk_size=8).features(model, dataset, "relu3", batch_size=4)
    assert counter.images == IMAGES - 16
    expected = sequential_until(model, "relu3", pixels_of(dataset)).mean(axis=(2, 3))
    np.testing.assert_allclose(features.codes, expected, rtol=1e-5, atol=1e-5)


def test_top_activations_equal_a_brute_force_search(store, dataset):
    model = make_tiny_model()
    k = 5
    features = store.features(model, dataset, "conv3", top_k=k, batch_size=6)
    everything = sequential_until(model, "conv3", pixels_of(dataset))  # N x C x H x W, before the ReLU
    values, where = features.top.sorted()
    assert values.shape == (everything.shape[1], k) and where.shape == (everything.shape[1], k, 3)
    for channel in range(everything.shape[1]):
        flat = everything[:, channel].ravel()
        best = np.argsort(-flat)[:k]
        np.testing.assert_allclose(values[channel], flat[best], rtol=1e-5, atol=1e-5)
        expected = np.stack(np.unravel_index(best, everything[:, channel].shape), axis=1)
        np.testing.assert_array_equal(where[channel], expected)


def test_top_activations_resume_after_a_stop(store, dataset):
    model = make_tiny_model()
    steps = store.extract(model, dataset, "conv3", top_k=3, batch_size=4)
    for progress in steps:
        if progress.step >= 20:
            break
    steps.close()
    resumed = store.features(model, dataset, "conv3", top_k=3, batch_size=4).top.sorted()
    whole = FeatureStore(store.root.parent / "again").features(model, dataset, "conv3", top_k=3).top.sorted()
    np.testing.assert_allclose(resumed[0], whole[0], rtol=1e-6)
    np.testing.assert_array_equal(resumed[1], whole[1])


@pytest.fixture(scope="module")
def onnx_tiny(tmp_path_factory) -> Path:
    """The tiny net exported by the dynamo exporter with a free batch size, and its card."""
    folder = tmp_path_factory.mktemp("tiny-onnx")
    batch = {0: torch.export.Dim("batch", min=1)}
    module = make_tiny_model().module
    torch.onnx.export(
        module,
        (torch.rand(2, 3, SIZE, SIZE),),
        str(folder / "tiny.onnx"),
        dynamo=True,
        dynamic_shapes=(batch,),
    )
    card = {"title": "tiny", "input_size": [SIZE, SIZE], "mean": MEAN, "std": STD}
    (folder / "tiny.json").write_text(json.dumps(card))
    return folder


def runtime_with_output(path: Path, tensor: str, pixels: np.ndarray) -> np.ndarray:
    proto = onnx.load(str(path))
    proto.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([tensor], {session.get_inputs()[0].name: normalised(pixels).astype(np.float32)})[0]


def test_onnx_codes_come_from_onnx_runtime_and_equal_it(onnx_tiny, store, dataset):
    model = ModelStore([onnx_tiny]).get("tiny")
    features = store.features(model, dataset, "relu3", top_k=4, batch_size=6)
    assert features.engine == "onnxruntime"
    relus = [
        node.output[0]
        for node in onnx.load(str(onnx_tiny / "tiny.onnx")).graph.node
        if node.op_type == "Relu"
    ]
    activations = runtime_with_output(onnx_tiny / "tiny.onnx", relus[2], pixels_of(dataset))
    np.testing.assert_allclose(features.codes, activations.mean(axis=(2, 3)), rtol=1e-5, atol=1e-5)
    values, _ = features.top.sorted()
    np.testing.assert_allclose(
        values,
        -np.sort(-activations.transpose(1, 0, 2, 3).reshape(32, -1), axis=1)[:, :4],
        rtol=1e-5,
        atol=1e-5,
    )


def test_bad_requests_name_their_field(store, dataset):
    model = make_tiny_model()
    with pytest.raises(BadInput) as unknown:
        store.features(model, dataset, "no_such_layer")
    assert unknown.value.field == "layer"
    with pytest.raises(BadInput) as negative:
        store.features(model, dataset, "relu3", top_k=-1)
    assert negative.value.field == "top_k"


def test_progress_counts_images_up_to_the_whole_set(store, dataset):
    steps = list(store.extract(make_tiny_model(), dataset, "relu1", batch_size=16))
    assert all(isinstance(step, Progress) and step.total == IMAGES for step in steps)
    assert [step.step for step in steps] == [16, 32, 40]
    assert [step.step for step in store.extract(make_tiny_model(), dataset, "relu1")] == [40]
