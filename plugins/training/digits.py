"""Handwritten digits learnt live: a 1-layer (64 → 10 softmax) and a 2-layer (64 → 512 ReLU → 10) net side by
side on scikit-learn's digits, or on MNIST from IDX files a user has.

The lectures' deck 003 trains 784 → 10 and 784 → 512 → 10 nets on MNIST (LeCun, Bottou, Bengio, Haffner 1998,
"Gradient-based learning applied to document recognition"); by default the same two nets learn scikit-learn's
digits (UCI optdigits: 1,797 8×8 images, 0..16 grey levels, 64 inputs), which ship with scikit-learn, so a lecture
needs no download; a data set of MNIST's four IDX files (:class:`convlens.datasets.IdxDataset`) gives the deck's
784 inputs and its own train/test split. Differences: inputs scaled to [0, 1], scikit-learn's digits split 80/20
stratified with the run's seed, Adam on minibatches (the deck's plain SGD needs many more epochs). Both nets see
the same minibatches in the same order. The frames show the weights each class (1 layer) or each of the first
16 hidden units (2 layers) multiplies the pixels by, red positive and blue negative, changing as the nets learn.
The trained nets are kept as convlens models taking 3×H×W pictures in [0, 1], ink bright.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from convlens.errors import BadInput
from convlens.events import Event, Frame, Metrics, Progress, Result
from convlens.methods import Method, RunContext
from convlens.params import Choice, Dataset, Float, Int
from convlens.thread_limit import threads_here
from convlens.trained import TrainedModel

REFERENCE = (
    "LeCun, Bottou, Bengio, Haffner 1998, Gradient-based learning applied to document recognition; "
    "the digits: Alpaydin, Kaynak 1998, UCI Optical Recognition of Handwritten Digits"
)
SIDE = 8
CLASSES = 10
TEST_FRACTION = 0.2
TEMPLATES = 16
"""Hidden units whose weights the 2-layer net's frames show."""
TILE = 8
"""Each 8×8 template or digit is drawn this many screen pixels per data pixel (a larger one, fewer: 2 at 28×28)."""
SMALL_STEP = 2**24
"""A minibatch's multiply-adds (rows × weights) up to which training runs on one thread: the defaults' step is
2**20.3 (32 × 39,060 weights of both nets), MNIST's 2**23.7 (32 × 414,900). 200 of MNIST's steps took 0.32–0.37 s
on one thread and 6.3–11 s on two, with 2 cores and a load of 2.6 (2026-12-07)."""
NETS = {"one_layer": 1, "two_layer": 2}
"""The two nets of the deck by name, and their layers."""
TRAINED = {"1": ("one_layer",), "2": ("two_layer",), "both": ("one_layer", "two_layer")}
"""The nets each value of ``layers`` trains."""
MAX_MISCLASSIFIED = 60
DIVERGED_LOSS = 100 * math.log(CLASSES)
"""A batch's loss above 100 times chance's (ln 10) means the weights have blown up: Adam's bounded steps rarely
make the loss infinite, but at a learning rate of 1 or more they leave the net near chance for good."""


def load_digits_split(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits scaled to [0, 1] (N×64 float32), split 80/20 stratified by class with ``seed``:
    train images, train labels, test images, test labels and the test images' indices in the data set."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.data / 16.0).astype(np.float32)
    indices = np.arange(len(images))
    train, test = train_test_split(
        indices, test_size=TEST_FRACTION, stratify=digits.target, random_state=seed % 2**32
    )
    return images[train], digits.target[train], images[test], digits.target[test], test


def digits_net(
    layers: int, hidden: int, generator: torch.Generator, inputs: int = SIDE * SIDE
) -> nn.Sequential:
    """``inputs`` (64) → 10, or ``inputs`` → ``hidden`` ReLU → 10, initialised as ``nn.Linear`` is (uniform in
    ±1/√fan_in) from ``generator``, so a run's seed decides it whatever else the process draws."""
    sizes = [inputs, *([hidden] if layers == 2 else []), CLASSES]
    modules: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes, sizes[1:], strict=False):
        linear = nn.Linear(fan_in, fan_out)
        bound = 1.0 / math.sqrt(fan_in)
        with torch.no_grad():
            for parameter in (linear.weight, linear.bias):
                parameter.copy_(torch.rand(parameter.shape, generator=generator) * 2 * bound - bound)
        modules += [linear, nn.ReLU()]
    return nn.Sequential(*modules[:-1])


@dataclass(frozen=True)
class DigitsData:
    """A training run's digits: rows of flattened pictures in [0, 1] (float32) and their labels (int64)."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    test_index: np.ndarray
    """Each test digit's index in its data set."""
    size: tuple[int, int]
    drawing: str
    """How a digit was drawn (the contract's ``optdigits`` or ``mnist``), so a page can draw one the same way."""
    source: str


def sklearn_digits(seed: int) -> DigitsData:
    """scikit-learn's digits split as :func:`load_digits_split` splits them."""
    train_x, train_y, test_x, test_y, test_index = load_digits_split(seed)
    source = f"scikit-learn's digits (80 % split, seed {seed})"
    return DigitsData(train_x, train_y, test_x, test_y, test_index, (SIDE, SIDE), "optdigits", source)


def idx_splits(dataset: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """An :class:`~convlens.datasets.IdxDataset`'s ``train`` and ``t10k`` images and labels; ``BadInput`` naming
    ``params.dataset`` when the data set is not one, its files do not read, or a label is past 9."""
    from convlens.datasets import IdxDataset

    if not isinstance(dataset, IdxDataset):
        raise BadInput(
            "params.dataset",
            f"data set {dataset.id!r} is not MNIST's IDX files (train-images-idx3-ubyte, "
            "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte)",
        )
    try:
        splits = dataset.splits()
    except BadInput as error:
        raise BadInput("params.dataset", error.reason) from None
    for _, labels in splits.values():
        if labels.max() >= CLASSES:
            raise BadInput(
                "params.dataset", f"data set {dataset.id!r}: a label of {labels.max()}; digits are 0-9"
            )
    return splits


def idx_digits(dataset: Any) -> DigitsData:
    """An IDX data set's splits (:func:`idx_splits`) scaled to [0, 1]; its items list the training split
    first, so a test digit's index is past the training ones."""
    splits = idx_splits(dataset)
    (train_images, train_labels), (test_images, test_labels) = splits["train"], splits["t10k"]
    flat = lambda images: images.reshape(len(images), -1).astype(np.float32) / np.float32(255)  # noqa: E731
    return DigitsData(
        flat(train_images),
        train_labels.astype(np.int64),
        flat(test_images),
        test_labels.astype(np.int64),
        len(train_images) + np.arange(len(test_images)),
        (int(train_images.shape[1]), int(train_images.shape[2])),
        "mnist",
        f"the IDX data set {dataset.id!r} (its train and t10k splits)",
    )


def check_dataset(params: dict[str, Any], model: object, datasets: dict[str, Any]) -> None:
    """A ``dataset`` must be MNIST's IDX files that read well (checked when the run is requested)."""
    if "dataset" in datasets:
        idx_splits(datasets["dataset"])


class DigitPictures(nn.Module):
    """``net`` as a convlens model: Nx3xHxW pictures in [0, 1] → the channels' mean, flattened → logits.

    The data's grey levels (scikit-learn's 0..16, MNIST's 0..255) are the picture's 0..1, so a digit drawn or
    attacked as a picture is the net's own input."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.mean(dim=1).flatten(1))


def template_strip(weights: np.ndarray, size: tuple[int, int] = (SIDE, SIDE)) -> np.ndarray:
    """Each row of ``weights`` (K×64, or K×H·W) as a tile, red positive, blue negative, white 0 (each tile scaled
    by its own largest magnitude), side by side with 2-pixel gaps: HxWx3 float in [0, 1]."""
    tiles = [diverging(row.reshape(size)) for row in weights]
    return _grid(tiles, columns=len(tiles))


def diverging(values: np.ndarray) -> np.ndarray:
    """HxW values as HxWx3: white at 0, towards red for positive and blue for negative, by the largest |value|."""
    scale = float(np.abs(values).max()) or 1.0
    t = np.clip(values / scale, -1.0, 1.0)[..., None]
    red, blue = np.array([0.8, 0.1, 0.1]), np.array([0.1, 0.25, 0.8])
    return np.where(t >= 0, 1.0 + t * (red - 1.0), 1.0 - t * (blue - 1.0))


def confusion_picture(confusion: np.ndarray) -> np.ndarray:
    """The 10×10 counts (rows true, columns predicted) as a grid, each cell dark by its share of its row."""
    shares = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    cells = np.repeat(np.repeat(1.0 - shares, 2 * TILE, axis=0), 2 * TILE, axis=1)
    return np.repeat(cells[..., None], 3, axis=2)


def digit_grid(images: np.ndarray, columns: int = 10, size: tuple[int, int] = (SIDE, SIDE)) -> np.ndarray:
    """N×64 (or N×H·W) digits in [0, 1] as black-on-white tiles in rows of ``columns``."""
    tiles = [np.repeat(1.0 - image.reshape(size)[..., None], 3, axis=2) for image in images]
    return _grid(tiles, columns=columns)


def _grid(tiles: list[np.ndarray], columns: int) -> np.ndarray:
    height, width = tiles[0].shape[:2]
    scale = tile_scale((height, width))
    gap, tall, wide = 2, height * scale, width * scale
    rows = max(1, math.ceil(len(tiles) / columns))
    canvas = np.full((rows * (tall + gap) - gap, columns * (wide + gap) - gap, 3), 0.6)
    for index, tile in enumerate(tiles):
        top, left = (index // columns) * (tall + gap), (index % columns) * (wide + gap)
        canvas[top : top + tall, left : left + wide] = tile.repeat(scale, axis=0).repeat(scale, axis=1)
    return canvas


def tile_scale(size: tuple[int, int]) -> int:
    """Screen pixels per data pixel: :data:`TILE` at 8×8, about as large a tile at other sizes."""
    return max(1, SIDE * TILE // max(size))


def shown_weights(net: nn.Module) -> np.ndarray:
    """The first layer's weights the frames draw: all 10 classes' (1 layer) or the first 16 hidden units'."""
    return net[0].weight.detach()[:TEMPLATES].numpy()


def check_params(params: dict[str, Any], model: object) -> None:
    """A learning rate of 0 or below trains nothing (its range is checked here: the declaration's is inclusive)."""
    if not params["learning_rate"] > 0:
        raise BadInput("params.learning_rate", f"must be above 0, got {params['learning_rate']}")


def train_step(
    net: nn.Module,
    optimiser: torch.optim.Optimizer,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    epoch: int,
    learning_rate: float,
    who: str = "the",
) -> float:
    """One Adam step on a minibatch; its loss. A loss past :data:`DIVERGED_LOSS` (or NaN) stops the run with a
    ``BadInput`` naming the learning rate (``who`` names the net where a run trains several)."""
    loss = nn.functional.cross_entropy(net(inputs), targets)
    value = float(loss.detach())
    if not value <= DIVERGED_LOSS:  # NaN too
        raise BadInput(
            "params.learning_rate",
            f"{who} loss became {value:.4g} in epoch {epoch}: the learning rate {learning_rate} makes "
            "training diverge; try a smaller one",
        )
    # What zero_grad() does (gradients set to None), without its wrappers: a tenth of a small step's time.
    for group in optimiser.param_groups:
        for parameter in group["params"]:
            parameter.grad = None
    loss.backward()
    optimiser.step()
    return value


def digits_model(
    net: nn.Module,
    title: str,
    description: str,
    example: torch.Tensor,
    extra: dict[str, Any],
    size: tuple[int, int] = (SIDE, SIDE),
) -> TrainedModel:
    """A digits net as a convlens model: 3×H×W (8×8) pictures in [0, 1] (:class:`DigitPictures`), the ten
    digits."""
    return TrainedModel(
        module=DigitPictures(net).eval(),
        title=title,
        input_size=size,
        labels=[str(digit) for digit in range(CLASSES)],
        example=example,
        description=description,
        extra=extra,
    )


def digits_data(ctx: RunContext) -> DigitsData:
    """The run's digits: the chosen IDX data set's, else scikit-learn's split with the run's seed."""
    if "dataset" in ctx.datasets:
        return idx_digits(ctx.datasets["dataset"])
    return sklearn_digits(ctx.seed)


def net_shape(name: str, inputs: int, hidden: int) -> str:
    """The net's layer sizes as a title says them: ``64 → 10`` or ``64 → 512 ReLU → 10``."""
    return f"{inputs} → 10" if NETS[name] == 1 else f"{inputs} → {hidden} ReLU → 10"


def weight_frames(nets: dict[str, nn.Module], size: tuple[int, int], step: int) -> Iterator[Frame]:
    """The 1-layer net's ten templates (``templates``) and the 2-layer net's first hidden units (``hidden``)."""
    for name, net in nets.items():
        label = "templates" if name == "one_layer" else "hidden"
        yield Frame(template_strip(shown_weights(net), size), step=step, label=label)


def train_epoch(
    nets: dict[str, nn.Module],
    optimisers: dict[str, torch.optim.Optimizer],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    order: torch.Tensor,
    batch: int,
    epoch: int,
    rate: float,
) -> dict[str, float]:
    """One pass over ``inputs`` in ``order``, each minibatch a step of every net; each net's mean loss."""
    # A minibatch's rows are gathered into the same buffers at every step rather than a new tensor each time.
    batch_x = torch.empty(min(batch, len(inputs)), inputs.shape[1])
    batch_y = torch.empty(min(batch, len(inputs)), dtype=targets.dtype)
    totals = dict.fromkeys(nets, 0.0)
    for start in range(0, len(order), batch):
        chosen = order[start : start + batch]
        x = torch.index_select(inputs, 0, chosen, out=batch_x[: len(chosen)])
        y = torch.index_select(targets, 0, chosen, out=batch_y[: len(chosen)])
        for name, net in nets.items():
            loss = train_step(net, optimisers[name], x, y, epoch, rate, f"the {name.replace('_', '-')} net's")
            totals[name] += loss * len(chosen)
    return {name: total / len(inputs) for name, total in totals.items()}


def evaluate(
    nets: dict[str, nn.Module],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    test_inputs: torch.Tensor,
    test_y: np.ndarray,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Each net's train and test accuracy (``<net>.train_accuracy``, ``<net>.test_accuracy``) and its predicted
    test labels."""
    values, predicted = {}, {}
    with torch.inference_mode():
        for name, net in nets.items():
            values[f"{name}.train_accuracy"] = float((net(inputs).argmax(1) == targets).float().mean())
            predicted[name] = net(test_inputs).argmax(1).numpy()
            values[f"{name}.test_accuracy"] = float((predicted[name] == test_y).mean())
    return values, predicted


def run_digits(ctx: RunContext) -> Iterator[Event]:
    params = ctx.params
    epochs, batch, rate = params["epochs"], params["batch_size"], params["learning_rate"]
    data = digits_data(ctx)
    inputs, targets = torch.from_numpy(data.train_x), torch.from_numpy(data.train_y)
    test_inputs = torch.from_numpy(data.test_x)
    # Both nets are drawn, in a fixed order, whichever train: a net then learns the same whether or not the
    # other trains beside it.
    drawn = {
        name: digits_net(layers, params["hidden_units"], ctx.generator, inputs.shape[1])
        for name, layers in NETS.items()
    }
    nets = {name: drawn[name] for name in TRAINED[params["layers"]]}
    # fused: one kernel per tensor for Adam's whole update, not a dozen ops (30 epochs of the defaults' 2-layer
    # net in 0.61 s instead of 0.80; the loss after them differs in the 5th digit).
    optimisers = {name: torch.optim.Adam(net.parameters(), lr=rate, fused=True) for name, net in nets.items()}
    # Ops this small run faster on one thread than split over several (OpenMP's and MKL's hand-offs cost more
    # than they save, and on a busy machine a team waiting for a core stalls each step).
    weights = sum(parameter.numel() for net in nets.values() for parameter in net.parameters())
    threads = 1 if min(batch, len(inputs)) * weights <= SMALL_STEP else torch.get_num_threads()
    yield from weight_frames(nets, data.size, 0)
    began = time.perf_counter()
    for epoch in range(1, epochs + 1):
        # One order per epoch: both nets see the same minibatches.
        order = torch.randperm(len(inputs), generator=ctx.generator)
        with threads_here(threads):  # only around torch work: a run pauses at a yield, between epochs
            losses = train_epoch(nets, optimisers, inputs, targets, order, batch, epoch, rate)
            accuracies, predicted = evaluate(nets, inputs, targets, test_inputs, data.test_y)
        values = {f"{name}.loss": loss for name, loss in losses.items()} | accuracies
        yield Metrics(values, step=epoch)
        yield from weight_frames(nets, data.size, epoch)
        yield Progress(epoch, epochs)
    seconds = time.perf_counter() - began
    yield from finish(ctx, nets, data, predicted, seconds)


def net_summary(data: DigitsData, predicted: np.ndarray) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """A net's test accuracy, confusion matrix (rows true, columns predicted) and misclassified test digits; the
    matrix and the mistakes (the first :data:`MAX_MISCLASSIFIED`) as pictures."""
    confusion = np.zeros((CLASSES, CLASSES), dtype=np.int64)
    np.add.at(confusion, (data.test_y, predicted), 1)
    wrong = np.flatnonzero(predicted != data.test_y)
    shown = wrong[:MAX_MISCLASSIFIED]
    height, width = (side * tile_scale(data.size) for side in data.size)
    mistakes = digit_grid(data.test_x[shown], size=data.size) if len(shown) else np.ones((height, width, 3))
    summary = {
        "test_accuracy": float((predicted == data.test_y).mean()),
        "confusion": confusion.tolist(),
        "misclassified": [
            {"index": int(data.test_index[i]), "true": int(data.test_y[i]), "predicted": int(predicted[i])}
            for i in wrong
        ],
    }
    return summary, confusion_picture(confusion), mistakes


def finish(
    ctx: RunContext,
    nets: dict[str, nn.Module],
    data: DigitsData,
    predicted: dict[str, np.ndarray],
    seconds: float,
) -> Iterator[Event]:
    """Each net's confusion matrix and misclassified test digits as frames, then the result with the nets."""
    params = ctx.params
    height, width = data.size
    example = torch.from_numpy(data.test_x[:1]).reshape(1, 1, height, width).repeat(1, 3, 1, 1)
    summaries, images, arrays, models = {}, {}, {}, {}
    for name, net in nets.items():
        summary, confusion_image, mistakes = net_summary(data, predicted[name])
        yield Frame(confusion_image, label=f"{name}.confusion")
        yield Frame(mistakes, label=f"{name}.misclassified")
        images |= {f"{name}_confusion": confusion_image, f"{name}_misclassified": mistakes}
        arrays[f"{name}_confusion"] = np.array(summary["confusion"])
        shape = net_shape(name, height * width, params["hidden_units"])
        accuracy = summary["test_accuracy"]
        models[name] = digits_model(
            net,
            f"Digits, {NETS[name]} layer{'s' * (NETS[name] > 1)} ({shape})",
            example=example,
            description=(
                f"{shape} trained on {data.source} for {params['epochs']} epochs of Adam (learning rate "
                f"{params['learning_rate']}, batch {params['batch_size']}, seed {ctx.seed}); test accuracy "
                f"{accuracy:.4f}. Takes {height}×{width} pictures in [0, 1], ink bright."
            ),
            extra={"test_accuracy": accuracy, "drawing": data.drawing},
            size=data.size,
        )
        # The saved model's id, "<job id>-<name>.onnx", is in result.json's models: a run does not know its job id.
        summaries[name] = summary
        label = "templates" if name == "one_layer" else "hidden"
        images[label] = template_strip(shown_weights(net), data.size)
    yield Result(
        images=images,
        data={
            "nets": summaries,
            "input_size": list(data.size),
            "drawing": data.drawing,
            "labels": [str(digit) for digit in range(CLASSES)],
            "train_size": len(data.train_x),
            "test_size": len(data.test_x),
            "training_seconds": seconds,
        },
        arrays=arrays,
        models=models,
    )


DIGITS = Method(
    name="digits",
    title="Handwritten digits, trained live",
    topic="Networks trained live",
    run=run_digits,
    params=(
        Choice(
            "layers",
            "both",
            ("1", "2", "both"),
            title="Layers",
            help="1: 64 → 10 softmax; 2: 64 → hidden ReLU → 10; both: the two side by side on the same batches.",
        ),
        Dataset(
            "dataset",
            None,
            nullable=True,
            title="Data set",
            help="None: scikit-learn's 8×8 digits; or a data set of MNIST's four IDX files (28×28, its own "
            "train/test split).",
        ),
        Int("hidden_units", 512, minimum=1, maximum=4096, title="Hidden units", help="Of the 2-layer net."),
        Int(
            "epochs",
            30,
            minimum=1,
            maximum=500,
            title="Epochs",
            help="Passes over the training digits (1,437 of scikit-learn's).",
        ),
        Float("learning_rate", 0.001, minimum=0.0, maximum=10.0, title="Learning rate", help="Adam's."),
        Int("batch_size", 32, minimum=1, maximum=60000, title="Batch size"),
    ),
    check=check_params,
    check_datasets=check_dataset,
    description="A 1-layer and a 2-layer net learn handwritten digits side by side while you watch: loss and "
    "train/test accuracy per epoch, the first layers' weights as pictures, then each net's confusion matrix and "
    "misclassified test digits. scikit-learn's 8×8 digits, or MNIST from IDX files you have. The trained nets are "
    "saved as models every other method runs on, and a digit you draw can be fed to them.",
    reference=REFERENCE,
)
