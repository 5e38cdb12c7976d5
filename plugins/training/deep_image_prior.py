"""Deep Image Prior: a randomly initialised CNN restores a corrupted picture before it learns the corruption.

Ulyanov, Vedaldi & Lempitsky, "Deep Image Prior", CVPR 2018 (arXiv:1711.10925). An encoder–decoder with skip
connections (the paper's "skip" net, section 3 and its supplement) maps a fixed random code ``z`` to a picture
and is fitted, by Adam, to the corrupted picture alone (the loss masked to the known pixels for inpainting).
The net reproduces the picture's structure long before its noise, so the restoration's PSNR against the clean
picture peaks, then falls as it fits the noise: the point of the paper, streamed here step by step: each
shown step's loss, PSNR, the corrupted picture's PSNR (the level to beat), a frame (corrupted, restoration,
best so far, clean) and the result so far, so a job stopped at any time keeps its best picture and step.
``deep_image_prior_curves`` is its Figure 2: the same net fitted to a natural picture, that picture plus noise,
its pixels scrambled and white noise; the natural picture's loss falls fastest.

Differences from the paper, for two CPU cores: the net has 5 levels of 16 to 64 channels (the paper's 128) and
the picture is at most 256 px, so a run shows a better picture within a minute; sizes start at 64 px, as five
halvings must leave BatchNorm more than one value. The code ``z`` is perturbed each step as in the paper's
denoising (σ 1/30) but the output is not averaged over steps; the convolutions pad with zeros (the paper
reflects), one fewer op per layer. The clean picture is always known (convlens corrupts it), so the PSNR is
always streamed and ``stop_at_best`` may stop on it: an oracle the paper's fixed iteration counts stand in for.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - torch's own name
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from convlens.errors import BadInput
from convlens.events import Event, Frame, Metrics, Progress, Result
from convlens.images import to_image, to_tensor
from convlens.methods import Method, RunContext
from convlens.params import Bool, Choice, Float, Int, Param

REFERENCE = "Ulyanov, Vedaldi, Lempitsky 2018, Deep Image Prior, CVPR, arXiv:1711.10925"
TOPIC = "Networks trained live"
CORRUPTIONS = ("noise", "missing", "text", "jpeg")
CHANNELS = (16, 32, 64, 64, 64)
"""Widths of the 5 levels, finest first: the paper's inpainting net grows 16 to 128 the same way; the full-size
level, which costs most, is narrow."""
SKIP_CHANNELS = 4
CODE_CHANNELS = 32
CODE_SCALE = 0.1
"""``z`` is uniform in [0, 0.1], 32 channels, as the paper's code."""
CODE_JITTER = 1.0 / 30.0
"""Standard deviation of the Gaussian added to ``z`` at each step (the paper's ``reg_noise_std`` for denoising)."""
TEXT = "Deep Image Prior"
MAX_TEXT = 200
FRAME_LABEL = "corrupted | restoration | best | clean"


class SkipNet(nn.Module):
    """The paper's "skip" encoder–decoder: stride-2 conv blocks down, bilinear upsampling and conv blocks up,
    a 1x1 conv of each level's input concatenated on the way up, BatchNorm and LeakyReLU(0.2), sigmoid out.

    ``channels[i]`` is the width of level ``i``, which works at 1/2^i of the picture's size on the way up.
    """

    def __init__(self, channels: tuple[int, ...] = CHANNELS, skip: int = SKIP_CHANNELS) -> None:
        super().__init__()
        self.down = nn.ModuleList()
        self.skip = nn.ModuleList()
        self.up = nn.ModuleList()
        width = CODE_CHANNELS
        for level, out in enumerate(channels):
            self.skip.append(block(width, skip, 1))
            self.down.append(nn.Sequential(block(width, out, 3, stride=2), block(out, out, 3)))
            below = channels[level + 1] if level + 1 < len(channels) else out
            self.up.append(
                nn.Sequential(nn.BatchNorm2d(below + skip), block(below + skip, out, 3), block(out, out, 1))
            )
            width = out
        self.out = nn.Conv2d(channels[0], 3, 1)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        inputs = []
        x = code
        for down in self.down:
            inputs.append(x)
            x = down(x)
        for level in reversed(range(len(self.down))):
            skipped = self.skip[level](inputs[level])
            x = F.interpolate(x, size=skipped.shape[-2:], mode="bilinear", align_corners=False)
            x = self.up[level](torch.cat([x, skipped], dim=1))
        return torch.sigmoid(self.out(x))


def block(inputs: int, outputs: int, kernel: int, stride: int = 1) -> nn.Sequential:
    """Conv, BatchNorm, LeakyReLU(0.2)."""
    return nn.Sequential(
        nn.Conv2d(inputs, outputs, kernel, stride=stride, padding=kernel // 2),
        nn.BatchNorm2d(outputs),
        nn.LeakyReLU(0.2, inplace=True),
    )


def seeded_net(generator: torch.Generator) -> SkipNet:
    """A :class:`SkipNet` whose convolutions are initialised from ``generator`` as torch's default does
    (uniform in ±1/√fan-in): torch's own init draws from the global generator, which other jobs share."""
    net = SkipNet()
    with torch.no_grad():
        for conv in net.modules():
            if isinstance(conv, nn.Conv2d):
                bound = 1.0 / math.sqrt(conv.weight[0].numel())
                conv.weight.uniform_(-bound, bound, generator=generator)
                conv.bias.uniform_(-bound, bound, generator=generator)
    return net


def random_code(size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """The fixed input ``z``: 1 x 32 x H x W, uniform in [0, 0.1]."""
    return torch.rand(1, CODE_CHANNELS, *size, generator=generator) * CODE_SCALE


def fit_step(
    net: nn.Module,
    optimiser: torch.optim.Optimizer,
    code: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One Adam step of ``net(z + jitter)`` towards ``target`` on the pixels ``mask`` keeps: (output, loss)."""
    jittered = code + torch.randn(code.shape, generator=generator) * CODE_JITTER
    output = net(jittered)
    error = output - target
    loss = (error * mask).square().sum() / (mask.sum() * 3) if mask is not None else error.square().mean()
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    return output.detach(), loss.detach()


def psnr(image: torch.Tensor, clean: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of ``image`` against ``clean``, both in [0, 1]."""
    mse = float((image.clamp(0.0, 1.0) - clean).square().mean())
    return 10.0 * math.log10(1.0 / mse) if mse > 0 else math.inf


def square_picture(image: np.ndarray, size: int) -> torch.Tensor:
    """The picture's centre square resized to ``size``, 1x3xHxW in [0, 1]."""
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return to_tensor(image[top : top + side, left : left + side], (size, size))


def text_mask(size: int, text: str) -> torch.Tensor:
    """1x1xHxW: 0 under ``text`` written in rows across the picture, 1 elsewhere."""
    canvas = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=max(8, size // 8))
    line = max(8, size // 6)
    for row, top in enumerate(range(line // 4, size, line)):
        draw.text((-(row * line) % max(1, size // 3), top), (text + " ") * 4, fill=0, font=font)
    pixels = np.asarray(canvas, dtype=np.float32) / 255.0
    return torch.from_numpy((pixels > 0.5).astype(np.float32))[None, None]


def jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    """``image`` encoded and decoded as a JPEG of ``quality``."""
    pixels = (to_image(image) * 255.0 + 0.5).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return to_tensor(np.asarray(Image.open(buffer).convert("RGB")))


def corrupt(
    clean: torch.Tensor, params: dict, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The corrupted picture and the mask of its known pixels (``None`` when every pixel is known)."""
    kind = params["corruption"]
    size = clean.shape[-2:]
    if kind == "noise":
        noise = torch.randn(clean.shape, generator=generator) * (params["sigma"] / 255.0)
        return (clean + noise).clamp(0.0, 1.0), None
    if kind == "jpeg":
        return jpeg(clean, params["quality"]), None
    if kind == "missing":
        mask = (torch.rand(1, 1, *size, generator=generator) >= params["missing"]).float()
        field = "params.missing"
    else:
        mask = text_mask(size[0], params["text"])
        field = "params.text"
    if not bool(mask.any()):
        raise BadInput(field, "the mask covers the whole picture: no pixel is left to fit")
    return clean * mask, mask


class Best(NamedTuple):
    """The restoration nearest the clean picture so far: its PSNR, step, picture and loss."""

    psnr: float
    step: int
    image: torch.Tensor
    loss: float


def restoration_result(
    params: dict,
    clean: torch.Tensor,
    corrupted: torch.Tensor,
    mask: torch.Tensor | None,
    best: Best,
    last: torch.Tensor,
    step: int,
) -> Result:
    """The run's result as of ``step``: the four pictures, the mask, and the PSNRs of the corrupted picture,
    the best restoration (and its step) and the last."""
    pictures = {
        "corrupted": to_image(corrupted),
        "best": to_image(best.image),
        "last": to_image(last),
        "clean": to_image(clean),
    }
    return Result(
        images=pictures,
        arrays={
            **pictures,
            "mask": (mask[0, 0] if mask is not None else torch.ones(clean.shape[-2:])).numpy(),
        },
        data={
            "corruption": params["corruption"],
            "psnr_corrupted": psnr(corrupted, clean),
            "psnr_best": best.psnr,
            "best_step": best.step,
            "psnr_last": psnr(last, clean),
            "steps": step,
            "stopped_early": step < params["steps"],
        },
    )


def run_deep_image_prior(ctx: RunContext) -> Iterator[Event]:
    params = ctx.params
    clean = square_picture(ctx.image, params["size"])
    corrupted, mask = corrupt(clean, params, ctx.generator)
    code = random_code(clean.shape[-2:], ctx.generator)
    net = seeded_net(ctx.generator)
    optimiser = torch.optim.Adam(net.parameters(), lr=params["lr"])
    steps, every, patience = params["steps"], params["every"], params["patience"]
    # The level a restoration must beat, sent with every step's numbers: a chart's reference line.
    reference = {"corrupted psnr": psnr(corrupted, clean)}
    best = Best(-math.inf, 0, clean, math.nan)
    shown = 0
    for step in range(1, steps + 1):
        last, loss = fit_step(net, optimiser, code, corrupted, mask, ctx.generator)
        if not math.isfinite(float(loss)):
            raise BadInput(
                "params.lr", f"the fit diverged at step {step} (loss {float(loss)}); try a smaller lr"
            )
        quality = psnr(last, clean)
        if quality > best.psnr:
            best = Best(quality, step, last, float(loss))
        stopping = params["stop_at_best"] and step - best.step >= patience
        if step % every == 0 or step == steps or stopping:
            if shown < best.step < step:  # the peak fell between two shown steps: its point is shown too
                peak = {"loss": best.loss, "psnr": best.psnr, "best psnr": best.psnr}
                yield Metrics({**peak, **reference}, step=best.step)
            yield Frame(torch.cat([corrupted, last, best.image, clean], dim=3), step=step, label=FRAME_LABEL)
            numbers = {"loss": float(loss), "psnr": quality, "best psnr": best.psnr}
            yield Metrics({**numbers, **reference}, step=step)
            # Each shown step's result replaces the one before: a job stopped now keeps this one, best included.
            # Before its progress, so a stop asked for once step N is reported keeps step N's result.
            yield restoration_result(params, clean, corrupted, mask, best, last, step)
            yield Progress(step, steps)
            shown = step
        if stopping:
            break


def check_deep_image_prior(params: dict, model: object) -> None:
    """A mask of every pixel leaves nothing to fit; text needs a letter to draw and fits a line or so."""
    if params["corruption"] == "missing" and params["missing"] >= 1.0:
        raise BadInput("params.missing", "a fraction of 1 masks the whole picture: no pixel is left to fit")
    if params["corruption"] == "text" and not params["text"].strip():
        raise BadInput("params.text", "text to draw over the picture is required")
    if len(params["text"]) > MAX_TEXT:
        raise BadInput("params.text", f"at most {MAX_TEXT} characters, got {len(params['text'])}")


SIZE = Int(
    "size", 128, minimum=64, maximum=256, title="Size (px)", help="The picture's centre square, resized."
)
LR = Float("lr", 0.01, minimum=1e-5, maximum=1.0, title="Step size", help="Adam's learning rate.")
EVERY = Int("every", 10, minimum=1, maximum=500, help="Show a frame and the metrics every this many steps.")

PARAMS: tuple[Param, ...] = (
    Choice("corruption", "noise", CORRUPTIONS, help="Gaussian noise, missing pixels, text over it, or JPEG."),
    Float(
        "sigma", 25.0, minimum=0.0, maximum=255.0, title="Noise σ", help="In grey levels of 0–255 (noise)."
    ),
    Float("missing", 0.5, minimum=0.0, maximum=1.0, help="Fraction of pixels masked at random (missing)."),
    Param("text", "string", TEXT, help="Drawn over the picture, its pixels masked (text)."),
    Int("quality", 10, minimum=1, maximum=95, title="JPEG quality", help="Of the encoded picture (jpeg)."),
    SIZE,
    Int("steps", 400, minimum=1, maximum=5000, help="Adam steps."),
    LR,
    EVERY,
    Bool(
        "stop_at_best",
        False,
        title="Stop at the best PSNR",
        help="Stop once it has not improved for patience steps.",
    ),
    Int(
        "patience",
        100,
        minimum=1,
        maximum=10000,
        help="Steps without a better PSNR before stopping (stop at best).",
    ),
)

DEEP_IMAGE_PRIOR = Method(
    name="deep_image_prior",
    title="Deep Image Prior",
    topic=TOPIC,
    run=run_deep_image_prior,
    params=PARAMS,
    check=check_deep_image_prior,
    description="A random encoder–decoder CNN fitted to a corrupted picture alone restores it before it learns "
    "the corruption: watch the PSNR against the clean picture peak, then fall.",
    reference=REFERENCE,
)


CURVE_TARGETS = ("image", "image + noise", "scrambled", "white noise")
"""The paper's Figure 2 targets, also the names of the streamed loss series."""


def curve_targets(clean: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
    """The picture; it plus Gaussian noise of σ 25/255; its pixels in a random order; uniform white noise."""
    height, width = clean.shape[-2:]
    noisy = (clean + torch.randn(clean.shape, generator=generator) * (25.0 / 255.0)).clamp(0.0, 1.0)
    order = torch.randperm(height * width, generator=generator)
    scrambled = clean.flatten(2)[:, :, order].reshape(clean.shape)
    white = torch.rand(clean.shape, generator=generator)
    return [clean, noisy, scrambled, white]


def run_curves(ctx: RunContext) -> Iterator[Event]:
    params = ctx.params
    targets = curve_targets(square_picture(ctx.image, params["size"]), ctx.generator)
    code = random_code(targets[0].shape[-2:], ctx.generator)
    initial = seeded_net(ctx.generator).state_dict()
    nets, optimisers = [], []
    for _ in targets:  # the same net, the same start, for each target
        net = SkipNet()
        net.load_state_dict(initial)
        nets.append(net)
        optimisers.append(torch.optim.Adam(net.parameters(), lr=params["lr"]))
    steps, every = params["steps"], params["every"]
    curves = np.zeros((steps, len(targets)), dtype=np.float32)
    for step in range(1, steps + 1):
        fits = []
        for index, (net, optimiser, target) in enumerate(zip(nets, optimisers, targets, strict=True)):
            output, loss = fit_step(net, optimiser, code, target, None, ctx.generator)
            if not math.isfinite(float(loss)):
                raise BadInput(
                    "params.lr", f"the fit diverged at step {step} (loss {float(loss)}); try a smaller lr"
                )
            curves[step - 1, index] = float(loss)
            fits.append(output)
        if step % every == 0 or step == steps:
            yield Frame(torch.cat(fits, dim=3), step=step, label=" | ".join(CURVE_TARGETS))
            yield Metrics(dict(zip(CURVE_TARGETS, map(float, curves[step - 1]), strict=True)), step=step)
            yield Progress(step, steps)
    yield Result(
        images={
            name.replace(" ", "_").replace("_+_", "_plus_"): to_image(t)
            for name, t in zip(CURVE_TARGETS, targets, strict=True)
        },
        arrays={"losses": curves},
        data={
            "targets": list(CURVE_TARGETS),
            "final_loss": dict(zip(CURVE_TARGETS, map(float, curves[-1]), strict=True)),
        },
    )


DEEP_IMAGE_PRIOR_CURVES = Method(
    name="deep_image_prior_curves",
    title="Deep Image Prior: learning curves",
    topic=TOPIC,
    run=run_curves,
    params=(
        Int(
            "size",
            64,
            minimum=64,
            maximum=256,
            title="Size (px)",
            help="The picture's centre square, resized.",
        ),
        Int("steps", 300, minimum=1, maximum=3000, help="Adam steps on each target."),
        LR,
        EVERY,
    ),
    description="The paper's Figure 2: the same net fitted to the picture, the picture plus noise, its pixels "
    "scrambled, and white noise; the natural picture's loss falls fastest.",
    reference=REFERENCE,
)
