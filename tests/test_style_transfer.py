"""Neural style transfer fits the style's Gram matrices, reports the losses it promises, streams its steps, is
reproducible and refuses nonsense.

The losses (content MSE, weighted per-layer Gram losses, total variation) are recomputed here from the final
image with a plain float64 forward of the tiny net's own layers, never from the plugin's loss code.
"""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
from PIL import Image

from convlens.errors import BadInput
from convlens.events import Frame, Metrics, Progress, Result, to_uint8
from convlens.image_library import ImageLibrary
from convlens.runner import iterate, prepare_run
from convlens.testing import make_tiny_model, metric, of_type
from convlens_plugins.optimisation import style_transfer
from convlens_plugins.optimisation.style_transfer import STYLE_TRANSFER, gram, style_samples

FAST = {"size": 64, "init": "noise", "style_weight": 1e4}
"""Small, from noise (where the Gram matrices start far from the style's) and weighted to the style, so a run
takes seconds on a CPU."""


@pytest.fixture
def library_with_upload(tmp_path):
    """An image library as the server has one: these textures as samples, uploads kept in ``tmp_path``."""
    return ImageLibrary(style_samples(), tmp_path)


def run_with_library(library, model, image, **params):
    """The method run as a job runs it, its ``style`` image taken from ``library``."""
    ctx = prepare_run(STYLE_TRANSFER, model, image, params, images=library.get)
    return list(iterate(STYLE_TRANSFER, ctx))


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(("optimiser", "steps", "lr"), [("adam", 40, 0.1), ("lbfgs", 4, None)])
def test_gram_loss_falls_by_an_order_of_magnitude_on_the_default_model(
    convlens_run, default_model, sample_image, optimiser, steps, lr
):
    events = convlens_run(
        STYLE_TRANSFER,
        default_model,
        sample_image,
        style="brick",
        optimiser=optimiser,
        steps=steps,
        lr=lr,
        **FAST,
    )
    style = metric(events, "style")
    assert style[-1] < style[0] / 10, f"{optimiser}: style loss {style}"
    result = events[-1]
    assert isinstance(result, Result)
    assert result.arrays["image"].shape == (64, 64, 3)
    assert result.data["style_layers"] == pytest.approx(
        dict.fromkeys(style_transfer.DEFAULT_STYLE_LAYERS, 0.2)
    )
    assert result.data["content_layer"] == style_transfer.DEFAULT_CONTENT_LAYER
    assert result.data["style"] == pytest.approx(style[-1])


def test_style_loss_is_zero_on_the_style_itself_and_the_gram_matrix_is_f_ft_over_m(tiny_model):
    import torch

    activation = torch.arange(24, dtype=torch.float32).view(1, 2, 3, 4)
    features = activation[0].reshape(2, 12).double().numpy()
    assert np.allclose(gram(activation).numpy(), features @ features.T / 12)
    brick = style_samples()[0].load()
    loss = style_transfer.StyleLoss(
        tiny_model,
        torch.rand(1, 3, 64, 64),
        style_transfer.to_tensor(brick, (64, 64)),
        "relu2",
        {"relu1": 0.5, "relu3": 0.5},
        (1.0, 1.0, 0.0),
    )
    _, parts = loss(style_transfer.to_tensor(brick, (64, 64)))
    assert parts["style"] == pytest.approx(0.0, abs=1e-9)
    assert parts["content"] > 0


def activations_of(net: torch.nn.Sequential, card, image: np.ndarray) -> dict[str, np.ndarray]:
    """Every layer's CxHxW activation for an HxWx3 image in [0, 1], normalised by ``card``, in float64."""
    mean, std = (torch.tensor(v, dtype=torch.float64).view(1, 3, 1, 1) for v in (card.mean, card.std))
    x = (torch.from_numpy(image.transpose(2, 0, 1).copy())[None].double() - mean) / std
    found = {}
    with torch.no_grad():
        for name, layer in net.named_children():
            x = layer(x)
            found[name] = x[0].numpy()
    return found


def gram_of(activation: np.ndarray) -> np.ndarray:
    features = activation.reshape(activation.shape[0], -1)
    return features @ features.T / features.shape[1]


def test_the_reported_losses_are_the_promised_ones_of_the_final_image(tiny_model, sample_image):
    """Content: mean squared error at one layer; style: Σ_l w_l Σ(G_l − A_l)²/(4 C_l²) with G = FFᵀ/M and the
    weights of ``layer:weight`` normalised to sum 1; TV: mean |vertical step| + mean |horizontal step|; total:
    their weighted sum."""
    from skimage import data

    content = sample_image[100:164, 150:214]  # at the working size: neither picture is resized
    style = np.repeat(data.brick()[:64, :64, None], 3, axis=2)
    params = {
        "style": "brick-crop",
        "content_layer": "conv2",
        "style_layers": "relu1:3, conv3",
        "content_weight": 2.0,
        "style_weight": 50.0,
        "tv_weight": 0.5,
        "init": "noise",
        "steps": 3,
    }
    ctx = prepare_run(STYLE_TRANSFER, tiny_model, content, params, images={"brick-crop": style}.__getitem__)
    events = list(iterate(STYLE_TRANSFER, ctx))
    result = events[-1]
    assert isinstance(result, Result)
    image = result.arrays["image"].astype(np.float64)

    net = copy.deepcopy(tiny_model.module).double()
    seen = activations_of(net, tiny_model.card, image)
    wanted = activations_of(net, tiny_model.card, content.astype(np.float64) / 255)
    styled = activations_of(net, tiny_model.card, style.astype(np.float64) / 255)
    content_loss = np.mean((seen["conv2"] - wanted["conv2"]) ** 2)
    layer_losses = {
        name: np.sum((gram_of(seen[name]) - gram_of(styled[name])) ** 2) / (4 * seen[name].shape[0] ** 2)
        for name in ("relu1", "conv3")
    }
    style_loss = 0.75 * layer_losses["relu1"] + 0.25 * layer_losses["conv3"]
    tv = np.mean(np.abs(np.diff(image, axis=0))) + np.mean(np.abs(np.diff(image, axis=1)))
    total = 2.0 * content_loss + 50.0 * style_loss + 0.5 * tv

    assert (
        min(content_loss, *layer_losses.values(), tv) > 1e-6
    )  # no term is zero, so each comparison can fail
    reported = result.data
    assert reported["style_layers"] == pytest.approx({"relu1": 0.75, "conv3": 0.25})
    assert reported["content"] == pytest.approx(content_loss, rel=1e-4)
    assert reported["style"] == pytest.approx(style_loss, rel=1e-4)
    assert reported["tv"] == pytest.approx(tv, rel=1e-4)
    assert reported["total"] == pytest.approx(total, rel=1e-4)


def test_streams_a_frame_and_metrics_every_kth_step_and_the_last(convlens_run, tiny_model, sample_image):
    events = convlens_run(STYLE_TRANSFER, tiny_model, sample_image, style="grass", steps=7, every=3, size=48)
    frames = of_type(events, Frame)
    assert [f.step for f in frames] == [0, 3, 6, 7]
    assert [m.step for m in of_type(events, Metrics)] == [0, 3, 6, 7]
    assert set(of_type(events, Metrics)[0].values) == {"content", "style", "tv", "total"}
    assert [(p.step, p.total) for p in of_type(events, Progress)] == [(s, 7) for s in range(1, 8)]
    assert {f.pixels().shape for f in frames} == {(48, 48, 3)}
    assert np.array_equal(frames[-1].pixels(), to_uint8(events[-1].images["style_transfer"]))
    start = prepare_run(STYLE_TRANSFER, tiny_model, sample_image, {}).model_input((48, 48))
    assert np.array_equal(frames[0].pixels(), to_uint8(start[0].numpy().transpose(1, 2, 0))), "init=content"


def test_same_seed_same_frames_other_seed_other_noise(frames_by_seed):
    first, other = frames_by_seed(
        STYLE_TRANSFER, dict(style="brick", steps=3, init="noise", optimiser="lbfgs")
    )
    assert len(first) == 4
    assert not np.array_equal(first[0].pixels(), other[0].pixels())


def test_an_uploaded_style_image_is_used_and_weighted_layers_are_normalised(
    convlens_run, tiny_model, sample_image, library_with_upload
):
    stripes = np.zeros((40, 40, 3), dtype=np.uint8)
    stripes[::4] = 255
    upload_id, _ = library_with_upload.add_upload(png_bytes(stripes))
    events = run_with_library(
        library_with_upload, tiny_model, sample_image, style=upload_id, style_layers="relu1:3, relu2", steps=2
    )
    assert events[-1].data["style_layers"] == pytest.approx({"relu1": 0.75, "relu2": 0.25})
    plain = convlens_run(
        STYLE_TRANSFER, tiny_model, sample_image, style="brick", style_layers="relu1:3, relu2", steps=2
    )
    assert metric(events, "style")[0] != pytest.approx(metric(plain, "style")[0]), "the upload is the style"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"style": "no-such-picture"}, "params.style"),
        ({"style": "upload-0000000000000000"}, "params.style"),
        ({"style_layers": "relu1,_blocks.99"}, "params.style_layers"),
        ({"style_layers": "fc"}, "params.style_layers"),
        ({"style_layers": "relu1:heavy"}, "params.style_layers"),
        ({"style_layers": "relu1:0"}, "params.style_layers"),
        ({"content_layer": "_blocks.99"}, "params.content_layer"),
        ({"steps": 0}, "params.steps"),
        ({"steps": 10**6}, "params.steps"),
        ({"lr": 0.0}, "params.lr"),
        ({"lr": -0.1}, "params.lr"),
        ({"lr": 1e9}, "params.lr"),
        ({"optimiser": "sgd"}, "params.optimiser"),
        ({"init": "zeros"}, "params.init"),
        ({"style_weight": -1.0}, "params.style_weight"),
        ({"size": 8}, "params.size"),
        ({"size": 4096}, "params.size"),
        ({"every": 0}, "params.every"),
    ],
)
def test_bad_parameters_are_refused_naming_them(convlens_run, tiny_model, sample_image, params, field):
    with pytest.raises(BadInput) as error:
        convlens_run(STYLE_TRANSFER, tiny_model, sample_image, steps=params.pop("steps", 1), **params)
    assert error.value.field == field


def test_a_style_file_that_is_not_an_image_is_refused_naming_style(
    convlens_run, tiny_model, sample_image, library_with_upload, tmp_path
):
    (tmp_path / "upload-00000000deadbeef.png").write_bytes(b"these are notes, not pixels\n")
    with pytest.raises(BadInput) as error:
        run_with_library(
            library_with_upload, tiny_model, sample_image, style="upload-00000000deadbeef", steps=1
        )
    assert error.value.field == "params.style"


def test_fixed_size_model_refuses_another_working_size(convlens_run, sample_image):
    with pytest.raises(BadInput) as error:
        convlens_run(STYLE_TRANSFER, make_tiny_model(dynamic_size=False), sample_image, size=48, steps=1)
    assert error.value.field == "params.size"


def test_run_that_diverges_stops_with_a_clear_error_and_no_garbage(run_diverging):
    events = run_diverging(
        STYLE_TRANSFER,
        {"style": "brick", "steps": 10},
        after=4,  # two target forwards, then steps 0 and 1 are fine
        match=r"diverged at step 2: content (inf|nan)",
    )
    assert [f.step for f in of_type(events, Frame)] == [0, 1]
