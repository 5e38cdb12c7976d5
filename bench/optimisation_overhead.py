"""Per-step cost of the image-optimisation methods through a real convlens server versus a bare torch loop.

Issue 4's figure for ``class_model``, ``style_transfer``, ``activation_max``, ``inversion`` and
``feature_vis`` (``deepdream_overhead.py`` does DeepDream), as a table of method x model format. convlens side: ``python -m convlens serve`` on 127.0.0.1, ``POST /api/jobs``
on chelsea (seed 0, a frame every step), one Socket.IO viewer over a websocket acknowledging every frame at
once. *End to end* is steps / (the job's ``started`` → ``done`` received); *per step* runs from the first to
the last ``progress`` event received.

Reference side, in this process: the same model file loaded through ``ModelStore`` and reduced to the plain
torch callable convlens runs (the fx GraphModule of ``fx_taps.tapped_module`` for ONNX and ``.pt2``; for
``.pt`` the scripted module itself for logits, the compiled graph of ``torchscript.tapped_graph`` for layers,
both run in TorchScript's plain interpreter as convlens runs them),
and the plugin's step written out in torch, no frames, no encoding:

- ``class_model``: Adam on the [0, 1] pixels from the mean colour; objective = the target's logit minus
  ``l2_weight`` x the mean square of the normalised input; ascend, clamp to [0, 1].
- ``style_transfer``: Adam on the [0, 1] pixels from the content picture at ``--size``; loss = content MSE at
  ``_blocks.5`` + 100 x the Gram-matrix loss at five layers against the ``brick`` texture + 0.1 x total
  variation; descend, clamp to [0, 1].
- ``activation_max``: from the mean colour, the gradient of channel 4's mean at ``_blocks.9`` divided by its
  mean absolute value, a step of 0.05, then Table 1's first regulariser set (the plugin's
  ``regularise``: blur every 4 steps, zero the pixels of low norm), clamped to [0, 1].
- ``inversion``: Adam on the [0, 1] pixels from the mean colour; objective = the squared distance to the
  picture's code at ``_blocks.5`` over its squared norm + 1e-3 x the 6-norm prior + 1e-2 x the TV prior (the
  plugin's ``alpha_prior`` and ``tv_prior``); descend, clamp to [0, 1].
- ``feature_vis``: one ``--size`` image as Lucid parameterises it (the plugin's ``FourierImage``: seeded
  spectrum, 1/f, decorrelated colour, sigmoid), each step seen through the plugin's seeded ``robust_views``
  (pad, scale, rotate, jitter); Adam lr 0.05 on the spectrum raises channel 4's mean at ``_blocks.9``.

Both sides compute the same thing: the script prints the server's final value (the class's score, the
style-transfer loss, the unit's value, the code distance) next to the bare loop's, and the largest pixel difference of the final images. Each bare run
is set up and run in one fresh thread and models are loaded in one, as in ``deepdream_overhead.py`` (why: see its docstring).
Each convlens run sits between two bare runs and is set against their mean (``live.sandwiched``); the medians of
those ratios and of each side's rates are reported.
Run: ``.venv/bin/python bench/optimisation_overhead.py [--methods class_model,inversion --steps 30]``.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable

import numpy as np
import torch
from deepdream_overhead import (
    FORMATS,
    IMAGE,
    SEED,
    card_tensors,
    case_ratios,
    describe,
    interpreted,
    layers_function,
    normaliser,
    side_medians,
    timed_loop,
)
from live import (
    add_viewer_options,
    convlens_server,
    ensure_models,
    exit_on_sigterm,
    http,
    in_fresh_thread,
    machine_note,
    median,
    print_pooled,
    quartiles,
    sandwiched,
    stream_note,
    viewer_from_args,
    viewer_note,
    watched_job,
)
from live import write_summary as write_json
from PIL import Image

CLASS_LR = 0.02
L2_WEIGHT = 1.0
STYLE = "brick"
STYLE_LR = 0.02
CONTENT_LAYER = "_blocks.5"
STYLE_LAYERS = ("_stem_act", "_blocks.1", "_blocks.3", "_blocks.5", "_blocks.8")
WEIGHTS = (1.0, 100.0, 0.1)
"""Content, style and TV weights: the plugin's defaults."""
UNIT_LAYER, UNIT_CHANNEL, UNIT_PRESET = "_blocks.9", 4, "1"
"""activation_max's unit (a channel's mean) and Table 1's regulariser set."""
INVERSION_LAYER, INVERSION_LR, ALPHA_WEIGHT, TV_WEIGHT = "_blocks.5", 0.05, 1e-3, 1e-2
"""inversion's layer and its plugin's default step size and prior weights."""
FEATURE_LR = 0.05
"""feature_vis's step size on the spectrum (the plugin's default); its unit is activation_max's."""
METHODS = ("class_model", "style_transfer", "activation_max", "inversion", "feature_vis")
RESULT_IMAGE = {method: method for method in METHODS}
FINAL_VALUE = {
    "class_model": "score",
    "style_transfer": "total",
    "activation_max": "value_end",
    "inversion": "code_distance",
    "feature_vis": "objective_end",
}
"""The number both sides report for the final image: the target's logit, the style-transfer loss, the
unit's value, the distance to the picture's code."""

Function = Callable[[torch.Tensor], tuple[torch.Tensor, ...]]


# -- plain torch callables on the loaded model ------------------------------------------------------------
def logits_function(model) -> Function:
    """Normalised NCHW input → ``(logits,)``: what ``Model.forward(images)`` runs with no layers."""
    from convlens.models.fx_taps import GraphModel, tapped_module

    if isinstance(model, GraphModel):
        return tapped_module(model.graph_module, ())
    module = interpreted(model.module)
    return lambda inputs: (module(inputs),)


def mean_colour(model) -> torch.Tensor:
    """1x3xHxW pixels of the model's mean colour at its input size: the methods' ``mean`` start."""
    mean, _ = card_tensors(model)
    return mean.expand(1, 3, *model.input_size).clone()


def chelsea() -> np.ndarray:
    from skimage import data

    from convlens.images import to_float

    return to_float(np.asarray(data.chelsea()))


def texture(name: str) -> np.ndarray:
    """A scikit-image texture as the style plugin offers it: HxWx3 float32, grey repeated to RGB."""
    from skimage import data

    from convlens.images import to_float

    pixels = np.asarray(getattr(data, name)())
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    return to_float(np.ascontiguousarray(pixels[:, :, :3]))


# -- the reference loops ----------------------------------------------------------------------------------
def descend(
    optimiser: torch.optim.Optimizer, loss: torch.Tensor, image: torch.Tensor, check_gradient: bool
) -> None:
    """One step of ``optimiser`` down ``loss``, then ``image`` clamped to [0, 1], as the plugins step: the loss
    checked finite first and, with ``check_gradient``, the gradient too (``common.adam_step``'s check; style
    transfer's own step has none)."""
    if not np.isfinite(float(loss.detach())):
        raise RuntimeError("the loss is not finite")
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    if check_gradient and not bool(torch.isfinite(image.grad).all()):
        raise RuntimeError("the gradient is not finite")
    optimiser.step()
    with torch.no_grad():
        image.clamp_(0.0, 1.0)


def _bare_class_model(model, forward: Function, target: int, steps: int) -> dict:
    """``steps`` class-model steps in plain torch; rates, final score, image."""
    normalise = normaliser(model)
    image = mean_colour(model).requires_grad_(True)
    optimiser = torch.optim.Adam([image], lr=CLASS_LR)

    def objective() -> torch.Tensor:
        # Normalised twice, as the plugin does (once inside the model's forward, once for the L2 term):
        # Adam's first steps are ~lr x sign(gradient), so even rounding differences in the summed gradient
        # show in the image.
        score = forward(normalise(image))[0][0].float()[target]
        return score - L2_WEIGHT * normalise(image).float().pow(2).mean()

    def step() -> None:
        descend(optimiser, -objective(), image, check_gradient=True)

    def final() -> float:
        with torch.no_grad():
            return float(forward(normalise(image))[0][0].float()[target])

    return timed_loop(step, steps, lambda: image, final)


def gram(activation: torch.Tensor) -> torch.Tensor:
    features = activation[0].flatten(1).float()
    return features @ features.T / features.shape[1]


def _bare_style_transfer(model, forward: Function, size: int, steps: int) -> dict:
    """``steps`` Adam style-transfer steps in plain torch; rates, loss, image.

    ``forward`` returns the activations at ``CONTENT_LAYER`` and then at each of ``STYLE_LAYERS`` that differs.
    """
    from convlens.images import to_tensor

    normalise = normaliser(model)
    layers = list(dict.fromkeys([CONTENT_LAYER, *STYLE_LAYERS]))
    content = to_tensor(chelsea(), (size, size))
    style = to_tensor(texture(STYLE), (size, size))
    with torch.no_grad():
        content_target = forward(normalise(content))[0].float()
        styled = dict(zip(layers, forward(normalise(style)), strict=True))
        grams = [gram(styled[name]) for name in STYLE_LAYERS]
    style_at = [layers.index(name) for name in STYLE_LAYERS]
    layer_weight = 1.0 / len(STYLE_LAYERS)
    content_weight, style_weight, tv_weight = WEIGHTS
    image = content.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([image], lr=STYLE_LR)

    def loss() -> torch.Tensor:
        values = forward(normalise(image))
        content_loss = (values[0].float() - content_target).pow(2).mean()
        style_loss = sum(
            layer_weight * (gram(values[index]) - target).pow(2).sum() / (4 * target.shape[0] ** 2)
            for index, target in zip(style_at, grams, strict=True)
        )
        tv = (image[..., 1:, :] - image[..., :-1, :]).abs().mean() + (
            image[..., :, 1:] - image[..., :, :-1]
        ).abs().mean()
        return content_weight * content_loss + style_weight * style_loss + tv_weight * tv

    def step() -> None:
        descend(optimiser, loss(), image, check_gradient=False)

    def final() -> float:
        with torch.no_grad():
            return float(loss())

    return timed_loop(step, steps, lambda: image, final)


def _bare_activation_max(model, forward: Function, steps: int) -> dict:
    """``steps`` regularised activation-maximisation steps in plain torch."""
    from convlens_plugins.optimisation.activation_max import PRESETS, regularise

    settings = PRESETS[UNIT_PRESET]
    normalise = normaliser(model)
    mean, std = card_tensors(model)
    image = mean_colour(model)
    done = 0

    def value_of(pixels: torch.Tensor) -> torch.Tensor:
        return forward(normalise(pixels))[0][0, UNIT_CHANNEL].float().mean()

    def step() -> None:
        nonlocal image, done
        pixels = image.clone().requires_grad_(True)
        value = value_of(pixels)
        if not np.isfinite(float(value.detach())):
            raise RuntimeError("the unit's value is not finite")
        (gradient,) = torch.autograd.grad(value, pixels)
        scale = float(gradient.abs().mean())
        gradient = gradient / (scale + 1e-12)
        done += 1
        with torch.no_grad():
            image = regularise(image + settings["lr"] * gradient, gradient, mean, std, done, settings)

    def final() -> float:
        with torch.no_grad():
            return float(value_of(image))

    return timed_loop(step, steps, lambda: image, final)


def _bare_inversion(model, forward: Function, steps: int) -> dict:
    """``steps`` Adam feature-inversion steps in plain torch."""
    from convlens_plugins.optimisation.inversion import alpha_prior, tv_prior

    normalise = normaliser(model)
    with torch.no_grad():
        target = forward(normalise(chelsea_input(model)))[0][0].float().flatten()
    norm = target.pow(2).sum().clamp_min(1e-12)
    image = mean_colour(model).requires_grad_(True)
    optimiser = torch.optim.Adam([image], lr=INVERSION_LR)

    def distance() -> torch.Tensor:
        return (forward(normalise(image))[0][0].float().flatten() - target).pow(2).sum() / norm

    def step() -> None:
        objective = distance() + ALPHA_WEIGHT * alpha_prior(model, image) + TV_WEIGHT * tv_prior(image)
        descend(optimiser, objective.sum(), image, check_gradient=True)

    def final() -> float:
        with torch.no_grad():
            return float(distance())

    return timed_loop(step, steps, lambda: image, final)


def _bare_feature_vis(model, forward: Function, size: int, steps: int) -> dict:
    """``steps`` Lucid-style feature-visualisation steps in plain torch."""
    from convlens_plugins.optimisation.parameterisation import FourierImage, robust_views

    normalise = normaliser(model)
    generator = torch.Generator().manual_seed(SEED)  # as the job's own generator
    image = FourierImage(1, size, size, decay=1.0, generator=generator)
    optimiser = torch.optim.Adam([image.coefficients], lr=FEATURE_LR)

    def value_of(pixels: torch.Tensor) -> torch.Tensor:
        return forward(normalise(pixels))[0][:, UNIT_CHANNEL].float().flatten(1).mean(dim=1).mean()

    with torch.no_grad():
        value_of(image.pixels())  # the plugin's starting value

    def step() -> None:
        value = value_of(robust_views(image.pixels(), generator))
        if not np.isfinite(float(value.detach())):
            raise RuntimeError("the objective is not finite")
        optimiser.zero_grad()
        (-value).backward()
        optimiser.step()

    def final() -> float:
        with torch.no_grad():
            return float(value_of(image.pixels()))

    return timed_loop(step, steps, lambda: image.pixels().detach(), final)


# -- the convlens side -----------------------------------------------------------------------------------
def job_body(method: str, model_id: str, steps: int, target: int, size: int) -> dict:
    if method == "class_model":
        params = {"target": target, "steps": steps, "lr": CLASS_LR, "l2_weight": L2_WEIGHT, "init": "mean"}
    elif method == "activation_max":
        params = {
            "layer": UNIT_LAYER,
            "channel": UNIT_CHANNEL,
            "preset": UNIT_PRESET,
            "steps": steps,
            "init": "mean",
        }
    elif method == "feature_vis":
        objective = f"channel:{UNIT_LAYER}:{UNIT_CHANNEL}"
        params = {"objective": objective, "steps": steps, "lr": FEATURE_LR, "size": size, "every": 1}
    elif method == "inversion":
        params = {"layer": INVERSION_LAYER, "steps": steps, "lr": INVERSION_LR, "alpha_weight": ALPHA_WEIGHT}
        params |= {"tv_weight": TV_WEIGHT, "init": "mean", "every": 1}
    else:
        params = {"style": STYLE, "optimiser": "adam", "lr": STYLE_LR, "steps": steps, "size": size}
    return {"method": method, "model": model_id, "image": IMAGE, "params": params, "seed": SEED}


def server_outcome(server, job_id: str, method: str) -> tuple[float, np.ndarray]:
    """The job's final value (of its first image, for feature_vis's batch) and its result image (uint8)."""
    client = http()
    job = client.get(f"{server.url}/api/jobs/{job_id}", timeout=30)
    job.raise_for_status()
    value = job.json()["result"]["data"][FINAL_VALUE[method]]
    value = float(value[0] if isinstance(value, list) else value)
    answer = client.get(f"{server.url}/api/jobs/{job_id}/images/{RESULT_IMAGE[method]}.png", timeout=30)
    answer.raise_for_status()
    return value, np.asarray(Image.open(io.BytesIO(answer.content)).convert("RGB"))


# -- the run ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated: " + ", ".join(METHODS))
    parser.add_argument("--formats", default="onnx,pt2,pt", help="comma-separated: onnx, pt2, pt")
    parser.add_argument("--steps", type=int, default=40)
    add_viewer_options(parser)
    parser.add_argument(
        "--repeats", type=int, default=8, help="convlens runs per case, each between two bare ones"
    )
    parser.add_argument(
        "--size", type=int, default=128, help="style transfer's and feature_vis's working size"
    )
    parser.add_argument("--job-timeout", type=float, default=300)
    parser.add_argument("--json", default=None, help="write the summary rows here (for bench/run.py)")
    args = parser.parse_args(argv)
    exit_on_sigterm()

    from convlens.models.store import ModelStore
    from convlens.runtime import configure_threads, tune_malloc

    tune_malloc()  # as `convlens serve` does
    configure_threads()
    methods = [name.strip() for name in args.methods.split(",") if name.strip()]
    formats = [name.strip() for name in args.formats.split(",") if name.strip()]
    models_dir = ensure_models()
    store = ModelStore([models_dir])
    print(
        f"optimisation_overhead: {', '.join(methods)}; {args.steps} steps on {IMAGE}, style size {args.size};"
        f" {machine_note()}; {stream_note()}; {viewer_note(args)}",
        flush=True,
    )

    cases = [(method, fmt) for method in methods for fmt in formats]
    results: dict[tuple[str, str], dict[str, list]] = {}
    with convlens_server(models_dir) as server:
        viewer = viewer_from_args(server.url, args)
        try:
            for method, fmt in cases:
                model = in_fresh_thread(lambda fmt=fmt: store.get(FORMATS[fmt]))
                # The top class of the picture, given explicitly so both sides ascend the same score.
                target = in_fresh_thread(lambda m=model: m.predict(chelsea_input(m), k=1)[0]["index"])
                bare = bare_runner(method, model, target, args.size)

                def convlens(n: int, method=method, fmt=fmt, target=target) -> dict:
                    body = job_body(method, FORMATS[fmt], n, target, args.size)
                    return watched_job(server.url, viewer, body, n, args.job_timeout)

                def report_run(repeat: int, side: str, run: dict, method=method, fmt=fmt) -> None:
                    print(f"  repeat {repeat} {method:<14} {fmt:<5} {side:<8} {describe(run)}", flush=True)

                # Warm-up: model load and graph building on the server, first calls here.
                convlens(2)
                bare(2)
                runs = sandwiched(
                    lambda c=convlens: c(args.steps), lambda b=bare: b(args.steps), args.repeats, report_run
                )
                results[method, fmt] = {
                    **runs,
                    "server": [server_outcome(server, runs["convlens"][0]["job"], method)],
                }
        finally:
            if viewer is not None:
                viewer.close()

    rows, details = report(results, args.steps)
    write_json(args.json, rows, details)
    return 0


def bare_runner(method: str, model, target: int, size: int) -> Callable[[int], dict]:
    """:func:`bare_loop` built in one fresh thread, each ``run(steps)`` then set up and run in another, as a job."""
    run = in_fresh_thread(lambda: bare_loop(method, model, target, size))
    return lambda steps: in_fresh_thread(lambda: run(steps))


def bare_loop(method: str, model, target: int | None, size: int | None) -> Callable[[int], dict]:
    """``run(steps)``: the bare loop of ``method`` on ``model`` (``target`` for the class model, ``size`` for
    style transfer and feature_vis) in the calling thread, its torch callable built once here."""
    if method == "class_model":
        logits = logits_function(model)
        return lambda steps: _bare_class_model(model, logits, target, steps)
    if method == "activation_max":
        unit = layers_function(model, [UNIT_LAYER])
        return lambda steps: _bare_activation_max(model, unit, steps)
    if method == "inversion":
        code = layers_function(model, [INVERSION_LAYER])
        return lambda steps: _bare_inversion(model, code, steps)
    if method == "feature_vis":
        unit = layers_function(model, [UNIT_LAYER])
        return lambda steps: _bare_feature_vis(model, unit, size, steps)
    if method == "style_transfer":
        activations = layers_function(model, list(dict.fromkeys([CONTENT_LAYER, *STYLE_LAYERS])))
        return lambda steps: _bare_style_transfer(model, activations, size, steps)
    raise ValueError(f"no bare loop for {method!r}")


def chelsea_input(model) -> torch.Tensor:
    from convlens.images import to_tensor

    return to_tensor(chelsea(), tuple(model.input_size))


def report(results: dict, steps: int) -> tuple[list[dict], dict]:
    """Print the medians, the ratios to the neighbouring bare runs and the parity check; ``bench/run.py``'s
    rows and the details."""
    rows, details = [], {}
    print(
        f"\nit/s, medians ({steps} steps, {IMAGE}, a frame every step); ratios: each convlens run over the bare runs beside it"
    )
    print(
        f"{'method':<14} {'format':<6} {'convlens e2e':>12} {'per step':>9} {'received':>9} {'bare e2e':>9}"
        f" {'per step':>9} {'e2e/bare':>9} {'step/bare':>9} {'quartiles':>13}  final value convlens / bare, max pixel difference"
    )
    for (method, fmt), sides in results.items():
        medians = side_medians(sides)
        convlens, bare = medians["convlens"], medians["bare"]
        ratios = case_ratios(sides)
        low, high = quartiles(ratios["step"])
        received = median([run["per_step_received_its"] for run in sides["convlens"]])
        server_value, server_pixels = sides["server"][0]
        first = sides["bare"][0]
        diff = float(np.abs(server_pixels.astype(int) - first["pixels"].astype(int)).max())
        print(
            f"{method:<14} {fmt:<6} {convlens['e2e']:>12.2f} {convlens['step']:>9.2f} {received:>9.2f}"
            f" {bare['e2e']:>9.2f} {bare['step']:>9.2f} {median(ratios['e2e']):>9.3f} {median(ratios['step']):>9.3f}"
            f" {low:>6.3f}-{high:<6.3f}  {server_value:.6g} / {first['final']:.6g}, {diff:.0f}/255"
        )
        details[f"{method} {fmt}"] = {
            "medians_its": medians,
            "ratios": ratios,
            "final_value": {"convlens": server_value, "bare": first["final"]},
            "max_pixel_difference": diff,
            "runs": {
                side: [{k: v for k, v in run.items() if k != "pixels"} for run in sides[side]]
                for side in ("convlens", "bare")
            },
        }
        for name, label in (("e2e", "end to end"), ("step", "per step")):
            rows.append(
                {
                    "figure": f"{method} it/s, {fmt}, {label}: convlens vs bare torch",
                    "convlens": convlens[name],
                    "reference": bare[name],
                    "ratio": median(ratios[name]),
                }
            )
    print_pooled(details)
    return rows, details


if __name__ == "__main__":
    sys.exit(main())
