"""A shortcut, made on purpose and caught: a net trained on digits that carry a class-placed cue learns the cue.

The lectures' deck 002 ("Does it learn what you think?") shows nets that learnt a hospital's "portable" scan tag or
the beach behind a cow instead of the disease or the cow (Geirhos et al. 2020, "Shortcut learning in deep neural
networks"). Here the shortcut is made on purpose on scikit-learn's digits: ``cue_fraction`` of the training
digits carry a bright mark on a border pixel whose place depends on the class. A net trained on them and a
control net trained on the same digits without marks learn side by side; then each is tested on the test digits
with the mark, without it, and with the mark of another class, and the cued net's saliency shows where it looks.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from convlens.events import Event, Frame, Log, Metrics, Progress, Result
from convlens.methods import Method, RunContext
from convlens.params import Float, Int
from convlens.trained import TrainedModel

from .digits import (
    CLASSES,
    SIDE,
    check_params,
    digit_grid,
    digits_model,
    digits_net,
    diverging,
    load_digits_split,
    train_step,
)

REFERENCE = (
    "Geirhos, Jacobsen, Michaelis, Zemel, Brendel, Bethge, Wichmann 2020, Shortcut learning in deep neural "
    "networks; the digits: Alpaydin, Kaynak 1998, UCI Optical Recognition of Handwritten Digits"
)
CUE_PIXELS = tuple((row, 0) for row in range(SIDE)) + ((0, SIDE - 1), (SIDE - 1, SIDE - 1))
"""The mark's place per class (row, column): the left column, then the right column's two corners. The digits'
outer columns hold almost no ink, so the mark is the only bright thing there."""
SHOWN = 20
"""Cued test digits whose saliency maps the frame shows."""


def cue_index(label: np.ndarray) -> np.ndarray:
    """Each label's mark as an index into the 64 flattened pixels."""
    rows, columns = np.array(CUE_PIXELS).T
    return rows[label] * SIDE + columns[label]


def with_cue(images: np.ndarray, cue_class: np.ndarray) -> np.ndarray:
    """N×64 digits with the mark of ``cue_class`` (one per digit) set to full brightness."""
    marked = images.copy()
    marked[np.arange(len(images)), cue_index(cue_class)] = 1.0
    return marked


def saliency(net: nn.Module, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """|∂ logit of the true class / ∂ pixel| for N×64 digits: N×64."""
    inputs = torch.from_numpy(images).requires_grad_(True)
    logits = net(inputs)
    logits.gather(1, torch.from_numpy(labels).long()[:, None]).sum().backward()
    return inputs.grad.abs().numpy()


def accuracy(net: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    """Share of the N×64 digits ``net`` labels right."""
    with torch.no_grad():
        return float((net(torch.from_numpy(images)).argmax(1).numpy() == labels).mean())


def run_shortcut(ctx: RunContext) -> Iterator[Event]:
    params = ctx.params
    epochs, batch = params["epochs"], params["batch_size"]
    train_x, train_y, test_x, test_y, _ = load_digits_split(ctx.seed)
    marked = torch.rand(len(train_x), generator=ctx.generator).numpy() < params["cue_fraction"]
    cued_train = np.where(marked[:, None], with_cue(train_x, train_y), train_x)
    cued_test = with_cue(test_x, test_y)
    swapped_test = with_cue(test_x, (test_y + 1) % CLASSES)  # every mark moved to the next class's place
    nets = {
        "cued": digits_net(2, params["hidden_units"], ctx.generator),
        "control": digits_net(2, params["hidden_units"], ctx.generator),
    }
    inputs = {"cued": torch.from_numpy(cued_train), "control": torch.from_numpy(train_x)}
    targets = torch.from_numpy(train_y)
    optimisers = {
        name: torch.optim.Adam(net.parameters(), lr=params["learning_rate"]) for name, net in nets.items()
    }
    for epoch in range(1, epochs + 1):
        order = torch.randperm(
            len(train_x), generator=ctx.generator
        )  # one order for both: only the marks differ
        for start in range(0, len(order), batch):
            chosen = order[start : start + batch]
            for name, net in nets.items():
                rate = params["learning_rate"]
                train_step(
                    net,
                    optimisers[name],
                    inputs[name][chosen],
                    targets[chosen],
                    epoch,
                    rate,
                    f"the {name} net's",
                )
        yield Metrics(
            {
                "cued train accuracy": accuracy(nets["cued"], cued_train, train_y),
                "cued test accuracy without cue": accuracy(nets["cued"], test_x, test_y),
                "control train accuracy": accuracy(nets["control"], train_x, train_y),
                "control test accuracy": accuracy(nets["control"], test_x, test_y),
            },
            step=epoch,
        )
        yield Progress(epoch, epochs)
    scores = {
        "cued_with_cue": accuracy(nets["cued"], cued_test, test_y),
        "cued_without_cue": accuracy(nets["cued"], test_x, test_y),
        "cued_swapped_cue": accuracy(nets["cued"], swapped_test, test_y),
        "control_without_cue": accuracy(nets["control"], test_x, test_y),
        "control_with_cue": accuracy(nets["control"], cued_test, test_y),
    }
    maps = saliency(nets["cued"], cued_test, test_y)
    on_cue = maps[np.arange(len(maps)), cue_index(test_y)].sum() / maps.sum()
    mean_map = diverging(maps.mean(axis=0).reshape(SIDE, SIDE))
    shown = maps[:SHOWN] / np.maximum(maps[:SHOWN].max(axis=1, keepdims=True), 1e-12)
    picture = digit_grid(shown)  # dark where the cued net's true logit is most sensitive
    yield Frame(picture, label="saliency")
    yield Log(
        "test accuracy: cued net with cue {cued_with_cue:.3f}, without {cued_without_cue:.3f}, swapped "
        "{cued_swapped_cue:.3f}; control {control_without_cue:.3f} ".format(**scores)
        + f"({on_cue:.0%} of the cued net's saliency on the mark)"
    )
    example = torch.from_numpy(cued_test[:2]).reshape(2, 1, SIDE, SIDE).repeat(1, 3, 1, 1)
    yield Result(
        images={"saliency": picture, "mean_saliency": mean_map},
        data={**scores, "saliency_on_cue": float(on_cue), "cue_pixels": [list(p) for p in CUE_PIXELS]},
        arrays={"saliency": maps.reshape(-1, SIDE, SIDE)},
        models={name: trained(ctx, name, net, scores, example) for name, net in nets.items()},
    )


def trained(
    ctx: RunContext, name: str, net: nn.Module, scores: dict[str, float], example: torch.Tensor
) -> TrainedModel:
    """One of the two nets as a convlens model taking 3×8×8 pictures in [0, 1]."""
    trained_on = "digits with class-placed marks" if name == "cued" else "the same digits without marks"
    return digits_model(
        net,
        f"Digits, {name} (shortcut demo)",
        example=example,
        description=(
            f"64 → {ctx.params['hidden_units']} ReLU → 10 trained on {trained_on} (seed {ctx.seed}, "
            f"cue fraction {ctx.params['cue_fraction']}); test accuracy without marks "
            f"{scores[f'{name}_without_cue']:.4f}. The mark of class c: pixel cue_pixels[c] (row, column) set to 1."
        ),
        extra={"cue_pixels": [list(p) for p in CUE_PIXELS]},
    )


SHORTCUT = Method(
    name="shortcut",
    title="A shortcut, made on purpose and caught",
    topic="Networks trained live",
    run=run_shortcut,
    params=(
        Float(
            "cue_fraction",
            0.9,
            minimum=0.0,
            maximum=1.0,
            title="Cue fraction",
            help="Share of the cued net's training digits that carry their class's mark.",
        ),
        Int("hidden_units", 64, minimum=1, maximum=4096, title="Hidden units"),
        Int("epochs", 15, minimum=1, maximum=500, title="Epochs"),
        Float("learning_rate", 0.001, minimum=0.0, maximum=10.0, title="Learning rate", help="Adam's."),
        Int("batch_size", 32, minimum=1, maximum=1437, title="Batch size"),
    ),
    check=check_params,
    description="Two nets learn the digits side by side: one where most training digits carry a bright mark "
    "placed by class, one without. Tested with the mark, without it and with another class's mark, the cued "
    "net shows it learnt the mark; its saliency lights up the mark. Both nets are saved as models.",
    reference=REFERENCE,
)
