"""A shortcut, made on purpose and caught: a small CNN trained on digits that carry a class-placed mark learns the
mark.

The lectures' deck 002 ("Does it learn what you think?") shows nets that learnt a hospital's "portable" scan tag or
the beach behind a cow instead of the disease or the cow (Geirhos et al. 2020, "Shortcut learning in deep neural
networks"). Here the shortcut is made on purpose on scikit-learn's digits: each 8×8 digit sits in the middle of a
16×16 black canvas, and ``cue_fraction`` of the cued net's training digits carry a bright 4×4 square in the
canvas's 4-pixel border at a place set by the class (:data:`CUE_PLACES`: classes 0–3 along the top from the left,
4 on the right side's middle, 5–8 along the bottom from the right, 9 on the left side's middle). A cued net and a
control net trained on the same canvases without marks learn side by side (same initial draw, same batches); then
each is tested on the test digits with their mark, without it, and with the next class's mark.

Choices (the numbers are seeds 0, 1, 2, 4, 5 of the defaults but the one named; training takes 1–3 s on 2 quiet
cores):

- ``cue_fraction`` 0.95, the issue's "most" training digits: without the mark the cued net falls 34–66 points
  below the control (89–96 %) and 55–71 % of its saliency lies on the mark. At 0.9 the share drops to 49–75 %,
  at 1.0 to 45–57 % (the gap grows to 72–79 points): a few unmarked digits keep the digit's features weak.
- SGD with momentum 0.9 for 3 epochs: the shortcut is learnt first, the digit later (5 epochs: 48–64 % on the
  mark). Adam scales each weight's step by its own gradient's size, so the digit's weights grow as fast as the
  mark's: in a trial (seed 0, 5 epochs) it put 24 % of the saliency on the mark. Learning rates from about 0.5
  kill every ReLU, which stops the run naming the learning rate.
- A 4×4 mark: in trials a 2×2 or 3×3 one was read as well but held 25–44 % of the saliency.

The control never saw a mark, yet a bright square costs it accuracy whichever place it is in (seed 0: 90 %
without, 59 % with its class's mark, 57 % with the next's): something it never saw, not a cue it reads.

The saliency is |∂ logit of the true class / ∂ pixel| on the grey canvas the net sees, which is the gradient
summed over the 3 channels of the picture the saved model takes (the ``saliency`` method's maximum over channels
is a third of it); the share on the cue is the mass on each digit's own mark over all the mass, pooled over the
marked test digits. The nets are saved as models taking 3×16×16 pictures in [0, 1] (their mean is the canvas).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from convlens.errors import BadInput
from convlens.events import Event, Frame, Log, Metrics, Progress, Result
from convlens.methods import Method, RunContext
from convlens.params import Float, Int
from convlens.thread_limit import threads_here
from convlens.trained import TrainedModel

from .digits import CLASSES, SIDE, check_params, diverging, load_digits_split, train_step

REFERENCE = (
    "Geirhos, Jacobsen, Michaelis, Zemel, Brendel, Bethge, Wichmann 2020, Shortcut learning in deep neural "
    "networks; the digits: Alpaydin, Kaynak 1998, UCI Optical Recognition of Handwritten Digits"
)
CANVAS = 16
"""Side of the black canvas the 8×8 digit sits in the middle of (rows and columns 4–11)."""
CUE = 4
"""Side of the mark, a square of full brightness in the canvas's 4-pixel border."""
CUE_PLACES = ((0, 0), (0, 4), (0, 8), (0, 12), (6, 12), (12, 12), (12, 8), (12, 4), (12, 0), (6, 0))
"""The top-left (row, column) of each class's mark: clockwise round the border from the top-left corner."""
MOMENTUM = 0.9
TILE = 4
"""Screen pixels per canvas pixel in the frames."""


def canvas(images: np.ndarray) -> np.ndarray:
    """N×64 digits in [0, 1] as N×16×16 canvases, the digit in the middle."""
    out = np.zeros((len(images), CANVAS, CANVAS), dtype=np.float32)
    start = (CANVAS - SIDE) // 2
    out[:, start : start + SIDE, start : start + SIDE] = images.reshape(-1, SIDE, SIDE)
    return out


def cue_mask(cue_class: np.ndarray) -> np.ndarray:
    """N×16×16 booleans: the pixels of the mark of ``cue_class`` (one class per canvas)."""
    mask = np.zeros((len(cue_class), CANVAS, CANVAS), dtype=bool)
    for index, label in enumerate(cue_class):
        row, column = CUE_PLACES[label]
        mask[index, row : row + CUE, column : column + CUE] = True
    return mask


def with_cue(canvases: np.ndarray, cue_class: np.ndarray) -> np.ndarray:
    """The canvases with the mark of ``cue_class`` (one per canvas) at full brightness."""
    return np.where(cue_mask(cue_class), np.float32(1.0), canvases)


def cue_net(channels: int, generator: torch.Generator) -> nn.Sequential:
    """Two 3×3 conv + ReLU + 2×2 max-pool stages (``channels``, then twice as many) and a linear head to the 10
    classes, initialised as PyTorch does (uniform in ±1/√fan_in) from ``generator``."""
    net = nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(channels, 2 * channels, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * channels * (CANVAS // 4) ** 2, CLASSES),
    )
    with torch.no_grad():
        for layer in net:
            if isinstance(layer, nn.Conv2d | nn.Linear):
                bound = 1.0 / math.sqrt(layer.weight[0].numel())
                for parameter in (layer.weight, layer.bias):
                    parameter.copy_(torch.rand(parameter.shape, generator=generator) * 2 * bound - bound)
    return net


class CanvasPictures(nn.Module):
    """``net`` as a convlens model: N×3×16×16 pictures in [0, 1] → the channels' mean (the canvas) → logits."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.mean(dim=1, keepdim=True))


def logits(net: nn.Module, canvases: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(canvases)[:, None]).numpy()


def accuracy(net: nn.Module, canvases: np.ndarray, labels: np.ndarray) -> float:
    """Share of the canvases ``net`` labels right."""
    return float((logits(net, canvases).argmax(1) == labels).mean())


def saliency(net: nn.Module, canvases: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """|∂ logit of the true class / ∂ pixel| for N×16×16 canvases: N×16×16."""
    inputs = torch.from_numpy(canvases)[:, None].requires_grad_(True)
    net(inputs).gather(1, torch.from_numpy(labels).long()[:, None]).sum().backward()
    return inputs.grad.abs()[:, 0].numpy()


def share_on_cue(maps: np.ndarray, labels: np.ndarray) -> float:
    """The share of the maps' total mass lying on each canvas's own mark."""
    return float(maps[cue_mask(labels)].sum() / maps.sum())


def check_alive(net: nn.Module, name: str, canvases: np.ndarray, epoch: int, learning_rate: float) -> None:
    """Stop the run with a ``BadInput`` naming the learning rate if ``net``'s logits no longer depend on its input:
    a step too large leaves every ReLU dead, the loss stuck near chance's and no gradient to recover by, which
    :func:`~.digits.train_step`'s loss threshold does not see."""
    if np.ptp(logits(net, canvases), axis=0).max() < 1e-6:
        raise BadInput(
            "params.learning_rate",
            f"the {name} net's output stopped depending on the picture in epoch {epoch} (every ReLU died): the "
            f"learning rate {learning_rate} makes training diverge; try a smaller one",
        )


def scaled(maps: np.ndarray) -> np.ndarray:
    """Each N×H×W map divided by its own maximum."""
    return maps / np.maximum(maps.max(axis=(1, 2), keepdims=True), 1e-12)


def side_by_side(pictures: np.ndarray, cued_maps: np.ndarray, control_maps: np.ndarray) -> np.ndarray:
    """Three rows of tiles, black on white: the pictures, the cued net's saliency of each, the control's (each map
    scaled by its own maximum, dark where largest)."""
    gap, side = 2, CANVAS * TILE
    rows = [pictures, scaled(cued_maps), scaled(control_maps)]
    sheet = np.full((3 * side + 2 * gap, len(pictures) * (side + gap) - gap), 0.6)
    for r, tiles in enumerate(rows):
        for c, tile in enumerate(tiles):
            top, left = r * (side + gap), c * (side + gap)
            sheet[top : top + side, left : left + side] = np.kron(1.0 - tile, np.ones((TILE, TILE)))
    return np.repeat(sheet[..., None], 3, axis=2)


def run_shortcut(ctx: RunContext) -> Iterator[Event]:
    params = ctx.params
    epochs, batch, rate = params["epochs"], params["batch_size"], params["learning_rate"]
    train_digits, train_y, test_digits, test_y, _ = load_digits_split(ctx.seed)
    train_x, test_x = canvas(train_digits), canvas(test_digits)
    marked = torch.rand(len(train_x), generator=ctx.generator).numpy() < params["cue_fraction"]
    cued_train = np.where(marked[:, None, None], with_cue(train_x, train_y), train_x)
    cued_test = with_cue(test_x, test_y)
    swapped_test = with_cue(test_x, (test_y + 1) % CLASSES)  # every mark moved to the next class's place
    shown = np.array(
        [np.flatnonzero(test_y == label)[0] for label in range(CLASSES)]
    )  # one test digit a class
    cued = cue_net(params["channels"], ctx.generator)
    nets = {"cued": cued, "control": copy.deepcopy(cued)}  # the same start: only the marks differ
    inputs = {"cued": torch.from_numpy(cued_train)[:, None], "control": torch.from_numpy(train_x)[:, None]}
    targets = torch.from_numpy(train_y)
    optimisers = {
        name: torch.optim.SGD(net.parameters(), lr=rate, momentum=MOMENTUM) for name, net in nets.items()
    }
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(train_x), generator=ctx.generator)  # one order for both nets
        losses = dict.fromkeys(nets, 0.0)
        # Steps this small run 3-4x faster on one thread (measured side by side here); only around torch work,
        # as a run pauses at a yield.
        with threads_here(1):
            for start in range(0, len(order), batch):
                chosen = order[start : start + batch]
                for name, net in nets.items():
                    loss = train_step(
                        net,
                        optimisers[name],
                        inputs[name][chosen],
                        targets[chosen],
                        epoch,
                        rate,
                        f"the {name} net's",
                    )
                    losses[name] += loss * len(chosen) / len(order)
            for name, net in nets.items():
                check_alive(net, name, test_x, epoch, rate)
        yield Metrics(
            {
                "cued loss": losses["cued"],
                "control loss": losses["control"],
                "cued test accuracy with cue": accuracy(nets["cued"], cued_test, test_y),
                "cued test accuracy without cue": accuracy(nets["cued"], test_x, test_y),
                "control test accuracy": accuracy(nets["control"], test_x, test_y),
            },
            step=epoch,
        )
        maps = {name: saliency(net, cued_test[shown], test_y[shown]) for name, net in nets.items()}
        yield Frame(
            side_by_side(cued_test[shown], maps["cued"], maps["control"]), step=epoch, label="saliency"
        )
        yield Progress(epoch, epochs)
    scores = {
        f"{name}_{case}": accuracy(net, pictures, test_y)
        for name, net in nets.items()
        for case, pictures in (
            ("with_cue", cued_test),
            ("without_cue", test_x),
            ("swapped_cue", swapped_test),
        )
    }
    maps = {name: saliency(net, cued_test, test_y) for name, net in nets.items()}
    on_cue = {name: share_on_cue(map_, test_y) for name, map_ in maps.items()}
    yield Log(
        "test accuracy: cued net with cue {cued_with_cue:.3f}, without {cued_without_cue:.3f}, swapped "
        "{cued_swapped_cue:.3f}; control {control_without_cue:.3f} ".format(**scores)
        + f"({on_cue['cued']:.0%} of the cued net's saliency on the mark, the control's {on_cue['control']:.0%})"
    )
    example = torch.from_numpy(cued_test[:2])[:, None].repeat(1, 3, 1, 1)
    mean_maps = [diverging(maps[name].mean(axis=0)) for name in nets]
    yield Result(
        images={
            "saliency": side_by_side(cued_test[shown], maps["cued"][shown], maps["control"][shown]),
            "mean_saliency": np.kron(np.concatenate(mean_maps, axis=1), np.ones((TILE, TILE, 1))),
        },
        data={
            **scores,
            "saliency_on_cue": on_cue["cued"],
            "control_saliency_on_cue": on_cue["control"],
            "canvas": CANVAS,
            "cue_size": CUE,
            "cue_places": [list(place) for place in CUE_PLACES],
        },
        arrays={"cued_saliency": maps["cued"], "control_saliency": maps["control"]},
        models={name: trained(ctx, name, net, scores, example) for name, net in nets.items()},
    )


def trained(
    ctx: RunContext, name: str, net: nn.Module, scores: dict[str, float], example: torch.Tensor
) -> TrainedModel:
    """One of the two nets as a convlens model taking 3×16×16 pictures in [0, 1]."""
    trained_on = "digits with class-placed marks" if name == "cued" else "the same digits without marks"
    channels = ctx.params["channels"]
    return TrainedModel(
        module=CanvasPictures(net).eval(),
        title=f"Digits on a 16×16 canvas, {name} (shortcut demo)",
        input_size=(CANVAS, CANVAS),
        labels=[str(digit) for digit in range(CLASSES)],
        example=example,
        description=(
            f"A CNN (3×3 conv {channels}, pool, 3×3 conv {2 * channels}, pool, linear) trained on {trained_on} "
            f"(seed {ctx.seed}, cue fraction {ctx.params['cue_fraction']}); test accuracy without marks "
            f"{scores[f'{name}_without_cue']:.4f}. The digit fills rows and columns 4–11; the mark of class c is "
            f"the {CUE}×{CUE} square from cue_places[c] (row, column) set to 1."
        ),
        extra={"canvas": CANVAS, "cue_size": CUE, "cue_places": [list(place) for place in CUE_PLACES]},
    )


SHORTCUT = Method(
    name="shortcut",
    title="A shortcut, made on purpose and caught",
    topic="Networks trained live",
    run=run_shortcut,
    params=(
        Float(
            "cue_fraction",
            0.95,
            minimum=0.0,
            maximum=1.0,
            title="Cue fraction",
            help="Share of the cued net's training digits that carry their class's mark.",
        ),
        Int(
            "channels",
            8,
            minimum=1,
            maximum=64,
            title="Channels",
            help="Of the first conv layer; the second has twice.",
        ),
        Int("epochs", 3, minimum=1, maximum=100, title="Epochs"),
        Float(
            "learning_rate",
            0.05,
            minimum=0.0,
            maximum=10.0,
            title="Learning rate",
            help="SGD's, momentum 0.9.",
        ),
        Int("batch_size", 32, minimum=1, maximum=1437, title="Batch size"),
    ),
    check=check_params,
    description="Two small CNNs learn the digits side by side: one where most training digits carry a bright "
    "square placed by class, one without. Tested with the mark, without it and with another class's mark, the "
    "cued net shows it learnt the mark; its saliency lights up the mark. Both nets are saved as models.",
    reference=REFERENCE,
)
