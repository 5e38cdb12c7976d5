"""Handwritten digits learnt live: a 1-layer (64 → 10 softmax) or 2-layer (64 → 512 ReLU → 10) net on
scikit-learn's digits.

The lectures' deck 003 trains 784 → 10 and 784 → 512 → 10 nets on MNIST (LeCun, Bottou, Bengio, Haffner 1998,
"Gradient-based learning applied to document recognition"); here the same two nets learn scikit-learn's digits
(UCI optdigits: 1,797 8×8 images, 0..16 grey levels, 64 inputs), which ship with scikit-learn, so a lecture needs
no download. Differences: 8×8 inputs scaled to [0, 1], a stratified 80/20 split drawn with the run's seed,
Adam on minibatches (the deck's plain SGD needs many more epochs). The frames show the weights each class (1
layer) or each of the first 16 hidden units (2 layers) multiplies the pixels by, red positive and blue negative,
changing as the net learns. The trained net is kept as a convlens model taking 3×8×8 pictures in [0, 1].
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from convlens.errors import BadInput
from convlens.events import Event, Frame, Metrics, Progress, Result
from convlens.methods import Method, RunContext
from convlens.params import Choice, Float, Int
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
"""Each 8×8 template or digit is drawn this many screen pixels per data pixel."""
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


def digits_net(layers: int, hidden: int, generator: torch.Generator) -> nn.Sequential:
    """64 → 10, or 64 → ``hidden`` ReLU → 10, initialised as ``nn.Linear`` is (uniform in ±1/√fan_in) from
    ``generator``, so a run's seed decides it whatever else the process draws."""
    sizes = [SIDE * SIDE, *([hidden] if layers == 2 else []), CLASSES]
    modules: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes, sizes[1:], strict=False):
        linear = nn.Linear(fan_in, fan_out)
        bound = 1.0 / math.sqrt(fan_in)
        with torch.no_grad():
            for parameter in (linear.weight, linear.bias):
                parameter.copy_(torch.rand(parameter.shape, generator=generator) * 2 * bound - bound)
        modules += [linear, nn.ReLU()]
    return nn.Sequential(*modules[:-1])


class DigitPictures(nn.Module):
    """``net`` as a convlens model: Nx3x8x8 pictures in [0, 1] → the channels' mean, flattened → logits.

    The data set's 0..16 grey levels are the picture's 0..1, so a digit drawn or attacked as a picture is the
    net's own input."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.mean(dim=1).flatten(1))


def template_strip(weights: np.ndarray) -> np.ndarray:
    """Each row of ``weights`` (K×64) as an 8×8 tile, red positive, blue negative, white 0 (each tile scaled by
    its own largest magnitude), side by side with 2-pixel gaps: HxWx3 float in [0, 1]."""
    tiles = [diverging(row.reshape(SIDE, SIDE)) for row in weights]
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


def digit_grid(images: np.ndarray, columns: int = 10) -> np.ndarray:
    """N×64 digits in [0, 1] as black-on-white tiles in rows of ``columns``."""
    tiles = [np.repeat(1.0 - image.reshape(SIDE, SIDE)[..., None], 3, axis=2) for image in images]
    return _grid(tiles, columns=columns)


def _grid(tiles: list[np.ndarray], columns: int) -> np.ndarray:
    gap, side = 2, SIDE * TILE
    rows = max(1, math.ceil(len(tiles) / columns))
    canvas = np.full((rows * (side + gap) - gap, columns * (side + gap) - gap, 3), 0.6)
    for index, tile in enumerate(tiles):
        top, left = (index // columns) * (side + gap), (index % columns) * (side + gap)
        canvas[top : top + side, left : left + side] = np.kron(tile, np.ones((TILE, TILE, 1)))
    return canvas


def shown_weights(net: nn.Sequential) -> np.ndarray:
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
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
    return value


def digits_model(
    net: nn.Module, title: str, description: str, example: torch.Tensor, extra: dict[str, Any]
) -> TrainedModel:
    """A digits net as a convlens model: 3×8×8 pictures in [0, 1] (:class:`DigitPictures`), the ten digits."""
    return TrainedModel(
        module=DigitPictures(net).eval(),
        title=title,
        input_size=(SIDE, SIDE),
        labels=[str(digit) for digit in range(CLASSES)],
        example=example,
        description=description,
        extra=extra,
    )


def run_digits(ctx: RunContext) -> Iterator[Event]:
    params = ctx.params
    layers, epochs, batch = int(params["layers"]), params["epochs"], params["batch_size"]
    train_x, train_y, test_x, test_y, test_index = load_digits_split(ctx.seed)
    inputs, targets = torch.from_numpy(train_x), torch.from_numpy(train_y)
    test_inputs = torch.from_numpy(test_x)
    net = digits_net(layers, params["hidden_units"], ctx.generator)
    optimiser = torch.optim.Adam(net.parameters(), lr=params["learning_rate"])
    yield Frame(template_strip(shown_weights(net)), step=0, label="templates")
    began = time.perf_counter()
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(inputs), generator=ctx.generator)
        total = 0.0
        for start in range(0, len(order), batch):
            chosen = order[start : start + batch]
            value = train_step(
                net, optimiser, inputs[chosen], targets[chosen], epoch, params["learning_rate"]
            )
            total += value * len(chosen)
        with torch.no_grad():
            train_accuracy = float((net(inputs).argmax(1) == targets).float().mean())
            test_predicted = net(test_inputs).argmax(1).numpy()
        test_accuracy = float((test_predicted == test_y).mean())
        yield Metrics(
            {"loss": total / len(inputs), "train_accuracy": train_accuracy, "test_accuracy": test_accuracy},
            step=epoch,
        )
        yield Frame(template_strip(shown_weights(net)), step=epoch, label="templates")
        yield Progress(epoch, epochs)
    seconds = time.perf_counter() - began
    yield from finish(
        ctx, net, test_x, test_y, test_index, test_predicted, test_accuracy, len(inputs), seconds
    )


def finish(
    ctx: RunContext,
    net: nn.Sequential,
    test_x: np.ndarray,
    test_y: np.ndarray,
    test_index: np.ndarray,
    predicted: np.ndarray,
    test_accuracy: float,
    train_size: int,
    seconds: float,
) -> Iterator[Event]:
    """The confusion matrix and the misclassified test digits as frames, then the result with the trained net."""
    confusion = np.zeros((CLASSES, CLASSES), dtype=np.int64)
    np.add.at(confusion, (test_y, predicted), 1)
    wrong = np.flatnonzero(predicted != test_y)
    shown = wrong[:MAX_MISCLASSIFIED]
    confusion_image = confusion_picture(confusion)
    misclassified_image = digit_grid(test_x[shown]) if len(shown) else np.ones((SIDE * TILE, SIDE * TILE, 3))
    yield Frame(confusion_image, label="confusion")
    yield Frame(misclassified_image, label="misclassified")
    layers = int(ctx.params["layers"])
    shape = "64 → 10" if layers == 1 else f"64 → {ctx.params['hidden_units']} ReLU → 10"
    example = torch.from_numpy(test_x[:1]).reshape(1, 1, SIDE, SIDE).repeat(1, 3, 1, 1)
    model = digits_model(
        net,
        f"Digits, {layers} layer{'s' * (layers > 1)} ({shape})",
        example=example,
        description=(
            f"{shape} trained on scikit-learn's digits (80 % split, seed {ctx.seed}) for {ctx.params['epochs']} "
            f"epochs of Adam (learning rate {ctx.params['learning_rate']}, batch {ctx.params['batch_size']}); "
            f"test accuracy {test_accuracy:.4f}. Takes 8×8 pictures in [0, 1], ink bright."
        ),
        extra={"test_accuracy": test_accuracy},
    )
    yield Result(
        images={
            "templates": template_strip(shown_weights(net)),
            "confusion": confusion_image,
            "misclassified": misclassified_image,
        },
        data={
            "test_accuracy": test_accuracy,
            "confusion": confusion.tolist(),
            "misclassified": [
                {"index": int(test_index[i]), "true": int(test_y[i]), "predicted": int(predicted[i])}
                for i in wrong
            ],
            "train_size": train_size,
            "test_size": len(predicted),
            "training_seconds": seconds,
        },
        arrays={"confusion": confusion},
        models={"digits": model},
    )


DIGITS = Method(
    name="digits",
    title="Handwritten digits, trained live",
    topic="Networks trained live",
    run=run_digits,
    params=(
        Choice("layers", 2, (1, 2), title="Layers", help="1: 64 → 10 softmax; 2: 64 → hidden ReLU → 10."),
        Int("hidden_units", 512, minimum=1, maximum=4096, title="Hidden units", help="Of the 2-layer net."),
        Int(
            "epochs",
            30,
            minimum=1,
            maximum=500,
            title="Epochs",
            help="Passes over the 1,437 training digits.",
        ),
        Float("learning_rate", 0.001, minimum=0.0, maximum=10.0, title="Learning rate", help="Adam's."),
        Int("batch_size", 32, minimum=1, maximum=1437, title="Batch size"),
    ),
    check=check_params,
    description="A 1- or 2-layer net learns scikit-learn's 8×8 digits while you watch: loss and train/test "
    "accuracy per epoch, the first layer's weights as pictures, then the confusion matrix and the misclassified "
    "test digits. The trained net is saved as a model every other method runs on.",
    reference=REFERENCE,
)
