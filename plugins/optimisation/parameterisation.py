"""The image of a feature visualisation: Fourier coefficients, a decorrelated colour space, and random transforms.

Olah, Mordvintsev & Schubert, "Feature Visualization", Distill 2017, sections "The Enemy of Feature
Visualization" and "Preconditioning and Parameterization". The optimiser never touches pixels: it moves the
coefficients of a spectrum whose frequency ``f`` is scaled by ``1 / max(f, 1/size)^decay``, so every frequency
band starts on a similar footing as in natural images (whose amplitude falls about as 1/f) instead of high
frequencies winning the gradient race. The inverse transform gives three decorrelated channels; a fixed 3x3
matrix mixes them into correlated RGB, and a sigmoid maps the result into [0, 1]. Each step sees the images
padded, scaled, rotated and shifted at random, so a pattern that only works at one exact pixel alignment earns
nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

COLOUR_COVARIANCE = np.array(
    [
        [0.073952, 0.050001, 0.032845],
        [0.050001, 0.051430, 0.045273],
        [0.032845, 0.045273, 0.049714],
    ]
)
"""Covariance of RGB pixel values in [0, 1] of natural photographs.

Measured for this module from the photographs bundled with scikit-image 0.26 (``astronaut``, ``chelsea``,
``coffee``, ``rocket`` and the left image of ``stereo_motorcycle``): each photo's pixel mean and second moment
are averaged with equal weight per photo, and the covariance is the averaged second moment minus the outer
product of the averaged mean (:func:`photo_colour_covariance` recomputes it; a test checks they agree). Its
eigenvalues, 0.145, 0.0285 and 0.0016, show the usual picture: most colour variation is brightness, shared by
the three channels.
"""
SPECTRUM_GAIN = 0.25
"""Factor on the inverse transform: with it, Adam's ``lr`` 0.05 moves the lowest frequencies by about one
percent of the sigmoid's input range per step, and a run of a few hundred steps stays inside the sigmoid's
steep part."""
INIT_STD = 0.01
"""Standard deviation of the seeded random Fourier coefficients an image starts from: a nearly grey picture."""
PICTURE_LIMIT = 0.01
"""A picture to start from is clipped to [0.01, 0.99]: the sigmoid reaches 0 and 1 only at infinity."""
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle")


def photo_colour_covariance() -> np.ndarray:
    """:data:`COLOUR_COVARIANCE` recomputed from scikit-image's sample photographs (see there)."""
    from skimage import data

    means, moments = [], []
    for name in PHOTOS:
        photo = getattr(data, name)()
        if isinstance(photo, tuple):
            photo = photo[0]
        pixels = photo.reshape(-1, 3).astype(np.float64) / 255.0
        means.append(pixels.mean(axis=0))
        moments.append(pixels.T @ pixels / len(pixels))
    mean = np.mean(means, axis=0)
    return np.mean(moments, axis=0) - np.outer(mean, mean)


def colour_square_root(covariance: np.ndarray = COLOUR_COVARIANCE) -> np.ndarray:
    """The symmetric square root ``S`` of ``covariance`` (``S Sᵀ = covariance``), from its eigen-decomposition.

    ``S`` maps three uncorrelated unit-variance channels to colours with that covariance.
    """
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    return eigenvectors @ np.diag(np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def colour_mixing() -> torch.Tensor:
    """:func:`colour_square_root` divided by its largest column norm: the 3x3 matrix from decorrelated to RGB.

    The division keeps the matrix's largest gain at 1, so ``lr`` does not depend on the covariance's units.
    """
    root = colour_square_root()
    return torch.tensor(root / np.linalg.norm(root, axis=0).max(), dtype=torch.float32)


def frequency_scale(height: int, width: int, decay: float) -> torch.Tensor:
    """``1 / max(f, 1/max(height, width))^decay`` for each coefficient of an ``rfft2`` of a HxW image.

    ``f`` is the frequency in cycles per pixel, ``sqrt(fy² + fx²)``; the floor keeps the constant term finite.
    """
    fy = torch.fft.fftfreq(height).view(-1, 1)
    fx = torch.fft.rfftfreq(width).view(1, -1)
    frequency = torch.sqrt(fy**2 + fx**2)
    return 1.0 / frequency.clamp(min=1.0 / max(height, width)) ** decay


class FourierImage:
    """A batch of images parameterised as scaled spectra in a decorrelated colour space.

    ``coefficients`` (Bx3xHx(W//2+1)x2, real and imaginary parts) is the tensor the optimiser moves;
    :meth:`pixels` is the Bx3xHxW batch in [0, 1] it stands for. They start as Lucid's do, small seeded
    noise (``init="noise"``), or at zero, a flat grey (``"zeros"``), or as ``picture`` (1x3xHxW in [0, 1],
    ``"image"``) for every image of the batch, its pixels clipped to [``PICTURE_LIMIT``, 1 - ``PICTURE_LIMIT``]
    so the sigmoid can reach them.
    """

    def __init__(
        self,
        batch: int,
        height: int,
        width: int,
        decay: float,
        generator: torch.Generator | None = None,
        init: str = "noise",
        picture: torch.Tensor | None = None,
    ) -> None:
        self.height, self.width = height, width
        self.scale = frequency_scale(height, width, decay)
        self.mixing = colour_mixing()
        shape = (batch, 3, height, width // 2 + 1, 2)
        if init == "noise":
            coefficients = torch.randn(shape, generator=generator) * INIT_STD
        elif init == "zeros":
            coefficients = torch.zeros(shape)
        elif init == "image" and picture is not None:
            coefficients = self.coefficients_of(picture).expand(shape).clone()
        else:
            raise ValueError(f"init {init!r} (with a picture: {picture is not None}) is not a start")
        self.coefficients = coefficients.requires_grad_(True)

    def coefficients_of(self, picture: torch.Tensor) -> torch.Tensor:
        """The coefficients whose :meth:`pixels` are ``picture`` (Nx3xHxW), clipped: :meth:`pixels` undone."""
        clipped = picture.float().clamp(PICTURE_LIMIT, 1.0 - PICTURE_LIMIT)
        rgb = torch.log(clipped) - torch.log1p(-clipped)  # the sigmoid's inverse
        decorrelated = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(self.mixing), rgb) / SPECTRUM_GAIN
        spectrum = torch.fft.rfft2(decorrelated, norm="ortho") / self.scale
        return torch.view_as_real(spectrum).contiguous()

    def decorrelated(self) -> torch.Tensor:
        """The three decorrelated channels (Bx3xHxW, unbounded) before colour mixing."""
        spectrum = torch.view_as_complex(self.coefficients) * self.scale
        return SPECTRUM_GAIN * torch.fft.irfft2(spectrum, s=(self.height, self.width), norm="ortho")

    def pixels(self) -> torch.Tensor:
        """The images, Bx3xHxW in [0, 1]: decorrelated channels mixed into RGB, then a sigmoid."""
        rgb = torch.einsum("ij,bjhw->bihw", self.mixing, self.decorrelated())
        return torch.sigmoid(rgb)


PAD = 12
"""Pixels of reflected border added before the random transforms, so rotation and scaling bring no black in,
and the largest random shift (jitter) of the crop back."""
MAX_SCALE = 0.1
"""Random scale drawn uniformly in ``[1 - MAX_SCALE, 1 + MAX_SCALE]``."""
MAX_DEGREES = 10.0
"""Random rotation drawn uniformly in ``[-MAX_DEGREES, MAX_DEGREES]``."""


def robust_views(
    images: torch.Tensor,
    generator: torch.Generator,
    pad: int = PAD,
    max_scale: float = MAX_SCALE,
    max_degrees: float = MAX_DEGREES,
) -> torch.Tensor:
    """``images`` (Bx3xHxW) each padded by ``pad`` px (at most the image's side less one), randomly scaled by
    up to ``max_scale`` and rotated by up to ``max_degrees`` about its centre, then cropped back to HxW at a
    random offset of up to ``pad`` px either way (the jitter). Differentiable; every draw is from
    ``generator``, one set per image, whatever the amounts."""
    batch, _, height, width = images.shape
    pad = max(0, min(pad, height - 1, width - 1))
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    scale = 1.0 + max_scale * (2.0 * torch.rand(batch, generator=generator) - 1.0)
    angle = math.radians(max_degrees) * (2.0 * torch.rand(batch, generator=generator) - 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    zero = torch.zeros(batch)
    # affine_grid maps output coordinates to input ones: dividing by the scale enlarges the picture.
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(images.dtype), list(padded.shape), align_corners=False)
    warped = F.grid_sample(padded, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    offsets = torch.randint(0, 2 * pad + 1, (batch, 2), generator=generator).tolist()
    return torch.stack(
        [warped[i, :, dy : dy + height, dx : dx + width] for i, (dy, dx) in enumerate(offsets)]
    )


LUCENT_PAD = 12
"""Lucent's ``standard_transforms``, which are Lucid's list (``lucent.optvis.transform``): a grey border of this
many px first, ..."""
LUCENT_FIRST_SHIFTS = 8
"""... then a shift right and down of 0 to 7 px (each axis drawn alone), ..."""
LUCENT_SCALES = tuple(1 + (i - 5) / 50 for i in range(11))
"""... a scale of 0.90, 0.92, ..., 1.10 (bilinear, corners aligned, to the next whole size; a smaller result is
padded with zeros back to at least the size it had), ..."""
LUCENT_ANGLES = tuple(range(-10, 11)) + 5 * (0,)
"""... a rotation about the centre by -10 to 10 degrees, 0 six times as likely as the others (zeros brought in), ..."""
LUCENT_LAST_SHIFTS = 4
"""... a shift of 0 to 3 px, and finally a bilinear resize to the model's input (``render_vis``'s upsample)."""


@dataclass(frozen=True)
class LucentDraw:
    """One draw of Lucent's standard transforms, shared by a whole batch as ``render_vis`` shares it."""

    first_shift: tuple[int, int]
    """(right, down) px."""
    scale: float
    degrees: float
    """Counter-clockwise on screen."""
    last_shift: tuple[int, int]

    @classmethod
    def sample(cls, generator: torch.Generator) -> LucentDraw:
        def pick(count: int) -> int:
            return int(torch.randint(count, (1,), generator=generator))

        first = (pick(LUCENT_FIRST_SHIFTS), pick(LUCENT_FIRST_SHIFTS))
        scale = LUCENT_SCALES[pick(len(LUCENT_SCALES))]
        degrees = float(LUCENT_ANGLES[pick(len(LUCENT_ANGLES))])
        return cls(first, scale, degrees, (pick(LUCENT_LAST_SHIFTS), pick(LUCENT_LAST_SHIFTS)))


def lucent_views(
    images: torch.Tensor, generator: torch.Generator, draw: LucentDraw | None = None
) -> torch.Tensor:
    """``images`` (Bx3xHxW) through Lucent's standard transforms (see :data:`LUCENT_PAD` and what follows it),
    resized back to HxW: the views ``render_vis(..., fixed_image_size=H)`` optimises. Differentiable.

    ``draw`` defaults to one drawn from ``generator``. The shifts are whole pixels, moved by slicing; Lucent moves
    them with kornia's ``translate``, a bilinear warp whose normalisation stretches them by ``size / (size - 1)``
    (7 px at 152 px: 7.05 px), which blurs its views by a few hundredths of a pixel more than these.
    """
    draw = draw or LucentDraw.sample(generator)
    height, width = images.shape[-2:]
    views = F.pad(images, (LUCENT_PAD,) * 4, value=0.5)
    views = _shifted(views, *draw.first_shift)
    views = _rescaled(views, draw.scale)
    views = _rotated(views, draw.degrees)
    views = _shifted(views, *draw.last_shift)
    return F.interpolate(views, size=(height, width), mode="bilinear", align_corners=True)


def _shifted(images: torch.Tensor, right: int, down: int) -> torch.Tensor:
    """``images`` moved ``right`` and ``down`` whole px, zeros brought in, same size."""
    if not right and not down:
        return images
    height, width = images.shape[-2:]
    return F.pad(images, (right, 0, down, 0))[..., :height, :width]


def _rescaled(images: torch.Tensor, scale: float) -> torch.Tensor:
    """Lucent's ``random_scale`` for one scale: resized to the next whole size, then zero-padded on each side to
    at least the old size when smaller."""
    height, width = images.shape[-2:]
    size = (math.ceil(scale * height), math.ceil(scale * width))
    if size == (height, width):  # corners-aligned resampling to the same size changes nothing
        return images
    resized = F.interpolate(images, size=size, mode="bilinear", align_corners=True)
    pad_y, pad_x = max(0, math.ceil((height - size[0]) / 2)), max(0, math.ceil((width - size[1]) / 2))
    return F.pad(resized, (pad_x, pad_x, pad_y, pad_y))


def _rotated(images: torch.Tensor, degrees: float) -> torch.Tensor:
    """``images`` rotated counter-clockwise on screen by ``degrees`` about the centre of their corner pixels,
    zeros brought in, same size."""
    if not degrees:
        return images
    batch, _, height, width = images.shape
    angle = math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    # Output → input in corner-aligned normalised coordinates (±1 at the corner pixels' centres): the inverse
    # rotation, with the aspect ratio taken out and put back.
    aspect = (height - 1) / max(1, width - 1)
    theta = images.new_tensor([[cos, -sin * aspect, 0.0], [sin / aspect, cos, 0.0]])
    grid = F.affine_grid(theta.expand(batch, 2, 3), list(images.shape), align_corners=True)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def mosaic(images: torch.Tensor, gap: int = 4) -> torch.Tensor:
    """Bx3xHxW images laid out in a near-square grid with white gaps: one 1x3xH'xW' picture (a new tensor, but
    ``images`` itself when it holds one image)."""
    count, channels, height, width = images.shape
    if count == 1:
        return images
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    sheet = images.new_ones(
        (1, channels, rows * height + (rows - 1) * gap, columns * width + (columns - 1) * gap)
    )
    for index, image in enumerate(images):
        top, left = (index // columns) * (height + gap), (index % columns) * (width + gap)
        sheet[0, :, top : top + height, left : left + width] = image
    return sheet
