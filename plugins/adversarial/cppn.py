"""Compositional pattern-producing networks: a picture drawn by a small network of the pixel's coordinates.

Stanley, "Compositional Pattern Producing Networks: A Novel Abstraction of Development", Genetic Programming and
Evolvable Machines 8(2), 2007. A CPPN maps each pixel's (x, y, r = √(x² + y²), bias) to its colour through
neurons with mixed activation functions (periodic, symmetric, sigmoidal...), so the pictures it draws are
regular: repeated, symmetric, smoothly graded. Nguyen, Yosinski & Clune 2015 (arXiv:1412.1897) evolve them to
fool image classifiers.

Differences from the papers: the topology is fixed (dense layers of :data:`HIDDEN` neurons, each layer also fed
the bias), only its weights are a genome (a flat vector of :func:`genome_size` numbers); NEAT would also add
neurons and links. Each hidden neuron's activation is fixed by its place (:func:`activation_of`), cycling
through :data:`ACTIVATIONS`, so every layer mixes them. The three outputs are red, green and blue through a
sigmoid (the fooling paper's CPPNs output hue, saturation and value).
"""

from __future__ import annotations

import numpy as np
import torch

HIDDEN = (8, 8, 8)
"""Neurons in each hidden layer."""
INPUTS = 4
"""x, y, r and a constant 1 (the bias)."""
OUTPUTS = 3
ACTIVATIONS = ("sin", "gaussian", "sigmoid", "tanh", "abs", "identity")
SPAN = 3.0
"""x and y run over [-SPAN, SPAN] across the picture: with weights of a few units, a sine repeats a few times."""
WEIGHT_BOUND = 3.0
"""Evolution keeps each weight in [-WEIGHT_BOUND, WEIGHT_BOUND] (polynomial mutation needs bounds)."""


def activate(name: str, values: torch.Tensor) -> torch.Tensor:
    """The activation function ``name`` applied to ``values``."""
    if name == "sin":
        return torch.sin(values)
    if name == "gaussian":
        return torch.exp(-values.square())
    if name == "sigmoid":
        return torch.sigmoid(values)
    if name == "tanh":
        return torch.tanh(values)
    if name == "abs":
        return values.abs()
    return values


def activation_of(layer: int, neuron: int) -> str:
    """The activation of hidden ``neuron`` in hidden ``layer`` (from 0): the layers start at different places."""
    return ACTIVATIONS[(neuron + 2 * layer) % len(ACTIVATIONS)]


def layer_shapes() -> list[tuple[int, int]]:
    """(inputs, outputs) of each weight matrix in genome order; every layer after the first also takes the bias."""
    sizes = [INPUTS, *HIDDEN, OUTPUTS]
    return [(sizes[0], sizes[1])] + [
        (fan_in + 1, fan_out) for fan_in, fan_out in zip(sizes[1:-1], sizes[2:], strict=True)
    ]


def genome_size() -> int:
    """The number of weights in a genome."""
    return sum(fan_in * fan_out for fan_in, fan_out in layer_shapes())


def coordinates(size: tuple[int, int]) -> np.ndarray:
    """(H·W)x4 float32 rows of (x, y, r, 1) for each pixel's centre, x and y in [-SPAN, SPAN] across the
    picture's width and height, row-major."""
    height, width = size
    ys = ((np.arange(height) + 0.5) / height * 2 - 1) * SPAN
    xs = ((np.arange(width) + 0.5) / width * 2 - 1) * SPAN
    y, x = np.meshgrid(ys, xs, indexing="ij")
    r = np.sqrt(x**2 + y**2)
    return np.stack([x, y, r, np.ones_like(x)], axis=-1).reshape(-1, INPUTS).astype(np.float32)


def render(genomes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The pictures (Nx3xHxW float32 in [0, 1]) the CPPNs with weights ``genomes`` (N x :func:`genome_size`)
    draw at ``size`` (height, width)."""
    weights = torch.as_tensor(np.asarray(genomes), dtype=torch.float32)
    if weights.ndim != 2 or weights.shape[1] != genome_size():
        raise ValueError(f"expected N x {genome_size()} CPPN weights, got shape {list(weights.shape)}")
    count = weights.shape[0]
    shapes = layer_shapes()
    offset = 0
    with torch.no_grad():
        # Neurons along dim 1 and pixels along dim 2: each neuron's values are one contiguous row.
        values = torch.from_numpy(coordinates(size).T.copy()).expand(count, -1, -1)
        for layer, (fan_in, fan_out) in enumerate(shapes):
            matrix = (
                weights[:, offset : offset + fan_in * fan_out].reshape(count, fan_in, fan_out).transpose(1, 2)
            )
            offset += fan_in * fan_out
            if layer:  # the last column is the bias's
                summed = torch.baddbmm(matrix[:, :, -1:], matrix[:, :, :-1], values)
            else:
                summed = torch.bmm(matrix, values)
            if layer == len(shapes) - 1:
                values = torch.sigmoid(summed)
                break
            values = torch.stack(
                [activate(activation_of(layer, j), summed[:, j]) for j in range(fan_out)], dim=1
            )
    height, width = size
    return values.reshape(count, OUTPUTS, height, width).numpy()
