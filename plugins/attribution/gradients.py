"""Gradient-based attributions beyond the plain saliency map: gradient × input, SmoothGrad, Integrated Gradients.

- Gradient × input: Shrikumar, Greenside, Shcherbina & Kundaje, "Not Just a Black Box: Learning Important
  Features Through Propagating Activation Differences", 2016 (arXiv:1605.01713); Captum's ``InputXGradient``.
- SmoothGrad: Smilkov, Thorat, Kim, Viégas & Wattenberg, "SmoothGrad: removing noise by adding noise",
  2017 (arXiv:1706.03825): the gradient averaged over copies of the image with Gaussian noise added,
  noise std = ``noise_level`` × (max - min) of the image.
- Integrated Gradients: Sundararajan, Taly & Yan, "Axiomatic Attribution for Deep Networks", ICML 2017
  (arXiv:1703.01365): (input - baseline) × the path integral of the gradient from baseline to input.

As for saliency, the class score is the logit, gradients are taken w.r.t. the picture in [0, 1] resized to the
model's input size (the model normalises inside), and ``target`` ``None`` means the top prediction. The signed
CxHxW attributions are in ``Result.arrays["attributions"]``; the shown heatmap is their maximum absolute value
over channels divided by its 99th percentile (see :mod:`.saliency`); ``images["signed"]`` shows their sum over
channels in blue (negative), white (zero) and red (positive), scaled by the 99th percentile of its magnitude.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name

from convlens.errors import BadInput
from convlens.events import Event, Frame, Progress, Result
from convlens.methods import ATTRIBUTION_MAP, Method, RunContext
from convlens.params import Choice, Float, Int

from .saliency import OVERLAY, SATURATE_PERCENTILE, TARGET, heatmap_overlay

if TYPE_CHECKING:
    from convlens.models.base import Model

TOPIC = "Which pixels matter"
BASELINES = ("black", "white", "grey", "blurred")
RULES = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")
"""Integration rules, named and placed as Captum's ``IntegratedGradients`` ``method`` places its points."""
BLUR_SIGMA = 0.05
"""The blurred baseline's Gaussian sigma, as a fraction of the image's longer side; the kernel is cut at
3 sigma and the edges are replicated."""
NEGATIVE = np.array([0.23, 0.30, 0.75], dtype=np.float32)
POSITIVE = np.array([0.71, 0.02, 0.15], dtype=np.float32)


# -- shared -----------------------------------------------------------------------------------------
def class_gradients(model: Model, images: torch.Tensor, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``d logit_target / d image`` for every image of an Nx3xHxW batch in [0, 1], and the batch's logits."""
    pixels = images.detach().clone().requires_grad_(True)
    logits = model.forward(pixels).logits
    (gradient,) = torch.autograd.grad(logits[:, target].sum(), pixels)
    return gradient, logits.detach()


def class_score(model: Model, image: torch.Tensor, target: int | None) -> tuple[int, float]:
    """The target (``None``: the top class of ``image``, 1x3xHxW) and its logit."""
    logits = model.logits(image)[0]
    if target is None:
        target = int(logits.argmax())
    return target, float(logits[target])


def diverging(values: np.ndarray) -> tuple[np.ndarray, float]:
    """Signed HxW values → HxWx3 blue-white-red, scaled by the 99th percentile of ``|values|``; and that scale."""
    scale = float(np.percentile(np.abs(values), SATURATE_PERCENTILE))
    scaled = np.clip(values / scale, -1.0, 1.0) if scale > 0 else np.zeros_like(values)
    weight = np.abs(scaled)[..., None].astype(np.float32)
    end = np.where(scaled[..., None] < 0, NEGATIVE, POSITIVE)
    return (1.0 - weight) + weight * end, scale


def attribution_views(
    image: torch.Tensor, attributions: np.ndarray, opacity: float, name: str
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """The images of a CxHxW signed attribution map over ``image``: the heatmap ``name``, ``map`` and ``signed``."""
    magnitude = np.abs(attributions).max(axis=0)
    heatmap, normalised, scale = heatmap_overlay(image, magnitude, opacity)
    signed, signed_scale = diverging(attributions.sum(axis=0))
    images = {name: heatmap, "map": normalised, "signed": signed}
    return images, {"scale": scale, "signed_scale": signed_scale, "max_abs": float(magnitude.max())}


def finish(
    ctx: RunContext,
    image: torch.Tensor,
    attributions: np.ndarray,
    name: str,
    target: int,
    score: float,
    **data,
) -> Iterator[Event]:
    """The final frame and the result of a method whose signed attributions are ``attributions`` (CxHxW)."""
    images, scales = attribution_views(image, attributions, ctx.params["overlay"], name)
    yield Frame(images[name], label=name)
    yield Result(
        images=images,
        arrays={"attributions": attributions, "attribution": np.abs(attributions).max(axis=0)},
        data={"target": target, "label": ctx.model.label(target), "score": score, **scales, **data},
    )


# -- gradient × input -------------------------------------------------------------------------------
def input_x_gradient(model: Model, image: torch.Tensor, target: int) -> np.ndarray:
    """``image × d logit_target / d image`` (3xHxW float32) for a 1x3xHxW image in [0, 1]."""
    gradient, _ = class_gradients(model, image, target)
    return (gradient * image)[0].float().numpy()


def run_input_x_gradient(ctx: RunContext) -> Iterator[Event]:
    image = ctx.model_input()
    target, score = class_score(ctx.model, image, ctx.params["target"])
    attributions = input_x_gradient(ctx.model, image, target)
    yield Progress(1, 1)
    yield from finish(ctx, image, attributions, "input_x_gradient", target, score)


INPUT_X_GRADIENT = Method(
    name="input_x_gradient",
    title="Gradient × input",
    topic=TOPIC,
    run=run_input_x_gradient,
    params=(TARGET, OVERLAY),
    needs=frozenset({"gradients"}),
    tags=frozenset({ATTRIBUTION_MAP}),
    description="The gradient of the class score (logit) times the pixel value, per pixel and channel: a "
    "first-order estimate of each pixel's contribution relative to a black image.",
    reference="Shrikumar, Greenside, Shcherbina, Kundaje 2016, Not Just a Black Box: Learning Important Features "
    "Through Propagating Activation Differences, arXiv:1605.01713",
)


# -- SmoothGrad -------------------------------------------------------------------------------------
def noise_std(image: torch.Tensor, noise_level: float) -> float:
    """SmoothGrad's noise standard deviation: ``noise_level`` × the image's value range."""
    return noise_level * float(image.max() - image.min())


def smoothgrad_steps(
    model: Model,
    image: torch.Tensor,
    target: int,
    samples: int,
    std: float,
    batch_size: int,
    generator: torch.Generator,
) -> Iterator[tuple[int, torch.Tensor]]:
    """After each batch of noisy copies: how many are done and the mean gradient so far (1x3xHxW).

    The noise of a batch of ``b`` copies is ``torch.randn((b, 3, H, W), generator=generator) * std``, drawn
    batch after batch: the same draws as Captum's ``NoiseTunnel`` makes from a generator in the same state
    with ``nt_samples_batch_size=batch_size``.
    """
    total = torch.zeros_like(image)
    for start in range(0, samples, batch_size):
        count = min(batch_size, samples - start)
        noise = torch.randn((count, *image.shape[1:]), generator=generator) * std
        gradient, _ = class_gradients(model, image + noise, target)
        total += gradient.sum(dim=0, keepdim=True)
        yield start + count, total / (start + count)


def run_smoothgrad(ctx: RunContext) -> Iterator[Event]:
    image = ctx.model_input()
    samples, reduce = ctx.params["samples"], ctx.params["reduce"]
    target, score = class_score(ctx.model, image, ctx.params["target"])
    std = noise_std(image, ctx.params["noise_level"])
    steps = smoothgrad_steps(ctx.model, image, target, samples, std, ctx.params["batch_size"], ctx.generator)
    for step, (done, mean) in enumerate(steps):
        views, _ = attribution_views(image, mean[0].numpy(), ctx.params["overlay"], "smoothgrad")
        yield Frame(views["smoothgrad" if reduce == "abs_max" else "signed"], step=step, label="smoothgrad")
        yield Progress(done, samples)
    yield from finish(ctx, image, mean[0].float().numpy(), "smoothgrad", target, score, noise_std=std)


SMOOTHGRAD = Method(
    name="smoothgrad",
    title="SmoothGrad",
    topic=TOPIC,
    run=run_smoothgrad,
    params=(
        TARGET,
        Int("samples", 50, minimum=1, maximum=500, title="Noisy copies", help="More copies, a smoother map."),
        Float(
            "noise_level",
            0.15,
            minimum=0.0,
            maximum=1.0,
            title="Noise level",
            help="Noise standard deviation as a fraction of the image's value range (the paper suggests 0.1-0.2).",
        ),
        Int(
            "batch_size",
            10,
            minimum=1,
            maximum=500,
            title="Batch size",
            help="Noisy copies per forward pass.",
        ),
        Choice(
            "reduce",
            "abs_max",
            ("abs_max", "signed"),
            title="Shown as",
            help="abs_max: largest |gradient| over colour channels as a heatmap; signed: the channel sum, "
            "blue negative, red positive.",
        ),
        OVERLAY,
    ),
    needs=frozenset({"gradients"}),
    tags=frozenset({ATTRIBUTION_MAP}),
    description="The gradient of the class score averaged over noisy copies of the image: the noise averages "
    "out the gradient's pixel-to-pixel jitter, leaving a sharper map. It sharpens live as copies come in.",
    reference="Smilkov, Thorat, Kim, Viégas, Wattenberg 2017, SmoothGrad: removing noise by adding noise, "
    "arXiv:1706.03825",
)


# -- Integrated Gradients ---------------------------------------------------------------------------
def path_points(rule: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions in [0, 1] along the path from baseline to input and their weights, for ``rule`` of :data:`RULES`."""
    if rule == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return 0.5 * (nodes + 1.0), 0.5 * weights
    # Riemann points come from a float32 linspace, as Captum's do: a ReLU net's gradient can jump between
    # points 1e-8 apart, so float64 points would differ from Captum's by more than float32 noise.
    if rule == "riemann_trapezoid":
        if steps < 2:
            raise BadInput("params.steps", "riemann_trapezoid needs at least 2 steps")
        weights = np.full(steps, 1.0 / (steps - 1))
        weights[[0, -1]] /= 2
        return torch.linspace(0.0, 1.0, steps).double().numpy(), weights
    ends = {
        "riemann_left": (0.0, 1.0 - 1.0 / steps),
        "riemann_middle": (0.5 / steps, 1.0 - 0.5 / steps),
        "riemann_right": (1.0 / steps, 1.0),
    }
    if rule not in ends:
        raise BadInput("params.method", f"expected one of {list(RULES)}, got {rule!r}")
    return torch.linspace(*ends[rule], steps).double().numpy(), np.full(steps, 1.0 / steps)


def baseline_image(image: torch.Tensor, kind: str) -> torch.Tensor:
    """The baseline ``kind`` of :data:`BASELINES` for a 1x3xHxW image; ``blurred`` is a Gaussian blur of it."""
    if kind == "black":
        return torch.zeros_like(image)
    if kind == "white":
        return torch.ones_like(image)
    if kind == "grey":
        return torch.full_like(image, 0.5)
    if kind != "blurred":
        raise BadInput("params.baseline", f"expected one of {list(BASELINES)}, got {kind!r}")
    sigma = BLUR_SIGMA * max(image.shape[-2:])
    radius = int(3 * sigma)
    offsets = torch.arange(-radius, radius + 1, dtype=image.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    channels = image.shape[1]
    blurred = F.pad(image, (radius, radius, radius, radius), mode="replicate")
    blurred = F.conv2d(blurred, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(blurred, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)


def integrated_gradients_steps(
    model: Model,
    image: torch.Tensor,
    baseline: torch.Tensor,
    target: int,
    alphas: np.ndarray,
    weights: np.ndarray,
    batch_size: int,
) -> Iterator[tuple[int, torch.Tensor]]:
    """After each batch of path points: how many are done and the attributions so far (1x3xHxW).

    The last yield holds ``(image - baseline) × Σ_k weight_k · gradient(baseline + alpha_k (image - baseline))``.
    """
    difference = image - baseline
    total = torch.zeros_like(image)
    for start in range(0, len(alphas), batch_size):
        alpha = torch.as_tensor(alphas[start : start + batch_size], dtype=image.dtype).view(-1, 1, 1, 1)
        weight = torch.as_tensor(weights[start : start + batch_size], dtype=image.dtype).view(-1, 1, 1, 1)
        gradient, _ = class_gradients(model, baseline + alpha * difference, target)
        total += (gradient * weight).sum(dim=0, keepdim=True)
        yield start + len(alpha), total * difference


def run_integrated_gradients(ctx: RunContext) -> Iterator[Event]:
    image = ctx.model_input()
    steps = ctx.params["steps"]
    alphas, weights = path_points(ctx.params["method"], steps)
    baseline = baseline_image(image, ctx.params["baseline"])
    target, score = class_score(ctx.model, image, ctx.params["target"])
    batches = integrated_gradients_steps(
        ctx.model, image, baseline, target, alphas, weights, ctx.params["batch_size"]
    )
    for done, running in batches:
        attributions = running[0].float().numpy()
        yield Progress(done, steps)
    # Completeness (the paper's axiom): the attributions add up to the change of the score along the path.
    baseline_score = float(ctx.model.logits(baseline)[0, target])
    total = float(attributions.sum(dtype=np.float64))
    difference = score - baseline_score
    yield from finish(
        ctx,
        image,
        attributions,
        "integrated_gradients",
        target,
        score,
        baseline_score=baseline_score,
        attribution_sum=total,
        completeness_error=total - difference,
        completeness_relative_error=abs(total - difference) / abs(difference) if difference else None,
    )


INTEGRATED_GRADIENTS = Method(
    name="integrated_gradients",
    title="Integrated Gradients",
    topic=TOPIC,
    run=run_integrated_gradients,
    params=(
        TARGET,
        Int(
            "steps",
            50,
            minimum=1,
            maximum=1000,
            title="Steps",
            help="Points on the path from baseline to image.",
        ),
        Choice(
            "baseline",
            "black",
            BASELINES,
            title="Baseline",
            help="The image of 'no evidence' the path starts from: black (0), white (1), grey (0.5), or blurred: "
            "the image under a Gaussian blur of sigma 5 % of its longer side.",
        ),
        Choice(
            "method",
            "gausslegendre",
            RULES,
            title="Integration rule",
            help="Where the points lie and how they are weighted (as Captum's IntegratedGradients).",
        ),
        Int(
            "batch_size",
            16,
            minimum=1,
            maximum=1000,
            title="Batch size",
            help="Path points per forward pass.",
        ),
        OVERLAY,
    ),
    needs=frozenset({"gradients"}),
    tags=frozenset({ATTRIBUTION_MAP}),
    description="The pixel-wise difference from a baseline times the class score's gradient integrated along the "
    "straight path from the baseline to the image; the attributions add up to the score's change (completeness).",
    reference="Sundararajan, Taly, Yan 2017, Axiomatic Attribution for Deep Networks, arXiv:1703.01365",
)

GRADIENT_METHODS = [INPUT_X_GRADIENT, SMOOTHGRAD, INTEGRATED_GRADIENTS]
