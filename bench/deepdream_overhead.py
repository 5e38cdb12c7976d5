"""DeepDream iterations per second through a real convlens server versus the same math in a bare torch loop.

convlens side: ``python -m convlens serve`` on 127.0.0.1, ``POST /api/jobs`` deepdream on chelsea (three octaves
by default as the plugin, a fixed layer, seed 0), one Socket.IO viewer over a websocket acknowledging every frame at once. Two rates:
*end to end*, steps / (the job's ``started`` → ``done`` received), which includes the top-5 prediction before
the first step and writing the result (PNG, GIF, JSON) after the last; and *per step*, from the first to the
last ``progress`` event received.

Reference side, in this process: the same model file loaded through ``ModelStore``, reduced to a plain torch
callable returning the layer's activation and computing nothing past it (the fx GraphModule that
``convlens.models.fx_taps.tapped_module`` builds for ONNX and ``torch.export`` files, the compiled TorchScript
graph of ``tapped_graph`` for ``.pt``),
and the plugin's step written out in torch: jitter roll, forward, mean square of the activation, gradient,
divide by its mean absolute value, step, clamp, roll back; at each octave the picture resized and the detail
of the last octave carried over. No frames, no encoding. The final image is
compared with the server's ``dream.png`` to show it is the same computation. Like a convlens job, each
reference run is a fresh thread: on a 2-core machine with other load, torch's OpenMP team behaves very
differently in the main thread (its spinning workers can make each parallel region cost milliseconds), so
running the loop in the main thread would compare threading set-ups, not convlens. For the same reason
the models are loaded in a fresh thread too, as the server loads them in request threads.

Within one run each convlens run sits between two bare runs and is set against their mean (``live.sandwiched``),
so the machine's drift and other load fall on both; medians are reported.
Run: ``.venv/bin/python bench/deepdream_overhead.py [--steps 30 --octaves 3 --repeats 6]``.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from live import (
    Viewer,
    add_viewer_options,
    convlens_server,
    ensure_models,
    exit_on_sigterm,
    http,
    in_fresh_thread,
    machine_note,
    median,
    neighbour_ratios,
    print_pooled,
    quartiles,
    rate,
    sandwiched,
    stream_note,
    viewer_from_args,
    viewer_note,
    watched_job,
    write_summary,
)
from PIL import Image

FORMATS = {"onnx": "efficientnet_lite0.onnx", "pt2": "efficientnet_lite0.pt2", "pt": "efficientnet_lite0.pt"}
IMAGE = "chelsea"
LAYER = "_blocks.9"
LR = 0.05
OCTAVE_SCALE = 1.4
JITTER = 16
SEED = 0

LayerFunction = Callable[[torch.Tensor], torch.Tensor]


# -- the reference: the plugin's math in plain torch -----------------------------------------------------
def interpreted(function: Callable) -> Callable:
    """``function`` run in TorchScript's plain interpreter, as convlens runs ``.pt`` graphs.

    A graph TorchScript's optimising executor first profiles with gradients on runs slower ever after (see
    ``TorchScriptModel.forward``); both sides use the interpreter so neither gets that handicap.
    """

    def run(*args):
        with torch.jit.optimized_execution(False):
            return function(*args)

    return run


def layers_function(model, layers: Sequence[str]) -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]]:
    """A plain torch callable: normalised NCHW input → the activations at ``layers`` (in order), nothing
    computed past them.

    The graph convlens itself runs for ``forward(..., logits=False)``: the fx GraphModule of
    ``fx_taps.tapped_module`` for ONNX and ``torch.export`` files, the compiled TorchScript graph of
    ``tapped_graph`` for ``.pt``, cut after the layers.
    """
    from convlens.models.fx_taps import GraphModel, tapped_module

    if isinstance(model, GraphModel):
        nodes = {point.name: point.node for point in model.layer_points()}
        return tapped_module(model.graph_module, tuple(nodes[name] for name in layers), logits=False)
    from convlens.models.torchscript import tapped_graph

    graph = tapped_graph(model.module, tuple(layers), logits=False)
    function = interpreted(torch._C._create_function_from_graph("bench_taps", graph))

    def run(inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        values = function(model.module, inputs)
        return values if isinstance(values, tuple) else (values,)

    return run


def layer_function(model, layer: str) -> LayerFunction:
    """:func:`layers_function` for one layer, returning its activation."""
    function = layers_function(model, [layer])
    return lambda inputs: function(inputs)[0]


def base_image(model) -> torch.Tensor:
    """The plugin's starting image: chelsea, long side at most twice the model's input size, 1x3xHxW in [0, 1]."""
    from skimage import data

    from convlens.images import to_float, to_tensor

    pixels = to_float(np.asarray(data.chelsea()))
    height, width = pixels.shape[:2]
    factor = min(1.0, 2 * max(model.input_size) / max(height, width))
    return to_tensor(pixels, (max(1, round(height * factor)), max(1, round(width * factor))))


def timed_loop(
    step: Callable[[], None],
    steps: int,
    image: Callable[[], torch.Tensor],
    final: Callable[[], float] | None = None,
) -> dict:
    """Run ``step`` ``steps`` times: it/s overall (``its``) and from the end of the first step on
    (``per_step_its``, as the convlens side's per-step rate leaves out the first step), the final ``image``
    as uint8 (``pixels``) and, if given, the ``final`` value.

    In the thread that made the tensors, as a job does: a loop run in another thread than its set-up ran at
    ~60% of the speed on the 2-core machine (torch's OpenMP team of the first thread stays alive).
    """
    from convlens.images import to_pixels

    started = first_done = time.perf_counter()
    for index in range(steps):
        step()
        if index == 0:
            first_done = time.perf_counter()
    finished = time.perf_counter()
    outcome = {
        "its": rate(steps, finished - started),
        "per_step_its": rate(steps - 1, finished - first_done),
        "pixels": to_pixels(image()),  # as the server streams a frame
    }
    if final is not None:
        outcome["final"] = final()
    return outcome


def bare_deepdream(model, forward_layer: LayerFunction, steps: int, octaves: int) -> dict:
    """``steps`` DeepDream steps in each of ``octaves`` octaves in plain torch, set up and run in one fresh
    thread; see :func:`timed_loop` for what it returns."""
    return in_fresh_thread(lambda: _bare_deepdream(model, forward_layer, steps, octaves))


def card_tensors(model) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's input mean and std, each 1x3x1x1 float32."""
    return tuple(
        torch.tensor(values, dtype=torch.float32).view(1, 3, 1, 1)
        for values in (model.card.mean, model.card.std)
    )


def normaliser(model) -> Callable[[torch.Tensor], torch.Tensor]:
    """Pixels in [0, 1] → the model's normalised input, as ``Model.forward`` does inside."""
    mean, std = card_tensors(model)
    return lambda images: (images - mean) / std


def _bare_deepdream(model, forward_layer: LayerFunction, steps: int, octaves: int) -> dict:
    from convlens_plugins.optimisation.deepdream import octave_sizes, resized

    normalise = normaliser(model)
    input_size = None if model.card.extra.get("dynamic_size") else tuple(model.input_size)
    rng = np.random.default_rng(SEED)
    base = base_image(model)
    sizes = iter(octave_sizes(tuple(base.shape[-2:]), octaves, OCTAVE_SCALE))
    size = next(sizes)
    octave_base = resized(base, size)
    dream = octave_base.clamp(0.0, 1.0)
    done = 0

    def step() -> None:
        nonlocal dream, octave_base, done
        if done and done % steps == 0:  # the next octave: the detail added so far, at its size
            detail, size = dream - octave_base, next(sizes)
            octave_base = resized(base, size)
            dream = (octave_base + resized(detail, size)).clamp(0.0, 1.0)
        done += 1
        shift = tuple(int(s) for s in rng.integers(-JITTER, JITTER + 1, size=2))
        rolled = torch.roll(dream, shifts=shift, dims=(2, 3)).requires_grad_(True)
        inputs = rolled if input_size is None else resized(rolled, input_size)
        objective = forward_layer(normalise(inputs)).float().pow(2).mean()
        if not np.isfinite(float(objective.detach())):
            raise RuntimeError("the objective is not finite")
        (gradient,) = torch.autograd.grad(objective, rolled)
        gradient = gradient / (gradient.abs().mean() + 1e-8)
        stepped = (rolled.detach() + LR * gradient).clamp_(0.0, 1.0)
        dream = torch.roll(stepped, shifts=(-shift[0], -shift[1]), dims=(2, 3))

    return timed_loop(step, steps * octaves, lambda: dream)


# -- the convlens side -----------------------------------------------------------------------------------
def deepdream_body(model_id: str, steps: int, octaves: int) -> dict:
    """The ``POST /api/jobs`` body of this bench's DeepDream: ``steps`` an octave, ``octaves`` of them."""
    params = {"layer": LAYER, "octaves": octaves, "octave_scale": OCTAVE_SCALE, "steps": steps, "lr": LR}
    return {
        "method": "deepdream",
        "model": model_id,
        "image": IMAGE,
        "params": {**params, "jitter": JITTER},
        "seed": SEED,
    }


def convlens_deepdream(
    server, viewer: Viewer | None, model_id: str, steps: int, octaves: int, timeout: float
) -> dict:
    body = deepdream_body(model_id, steps, octaves)
    return watched_job(server.url, viewer, body, steps * octaves, timeout)


def server_image(server, job_id: str) -> np.ndarray:
    answer = http().get(f"{server.url}/api/jobs/{job_id}/images/dream.png", timeout=30)
    answer.raise_for_status()
    return np.asarray(Image.open(io.BytesIO(answer.content)).convert("RGB"))


# -- the run ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="steps per octave")
    parser.add_argument("--octaves", type=int, default=3, help="octaves (the plugin's default: 3)")
    add_viewer_options(parser)
    parser.add_argument(
        "--repeats", type=int, default=6, help="convlens runs per format, each between two bare ones"
    )
    parser.add_argument("--formats", default="onnx,pt2,pt", help="comma-separated: onnx, pt2, pt")
    parser.add_argument("--job-timeout", type=float, default=300)
    parser.add_argument("--json", default=None, help="write the summary rows here (for bench/run.py)")
    args = parser.parse_args(argv)
    exit_on_sigterm()

    from convlens.models.store import ModelStore
    from convlens.runtime import configure_threads, tune_malloc

    tune_malloc()  # as `convlens serve` does, so both sides run with the same allocator settings
    configure_threads()
    formats = [name.strip() for name in args.formats.split(",") if name.strip()]
    models_dir = ensure_models()
    store = ModelStore([models_dir])
    print(
        f"deepdream_overhead: {args.steps} steps x {args.octaves} octaves on {IMAGE}, layer {LAYER}; {machine_note()}; {stream_note()};"
        f" {viewer_note(args)}",
        flush=True,
    )

    results: dict[str, dict[str, list]] = {}
    with convlens_server(models_dir) as server:
        viewer = viewer_from_args(server.url, args)
        try:
            for fmt in formats:
                # Loaded off the main thread, as the server loads models in request threads: torch work in
                # the main thread leaves it an OpenMP team, and with more OpenMP threads than cores libgomp
                # stops spinning, which made later steps in other threads ~30% slower here.
                model = in_fresh_thread(lambda fmt=fmt: store.get(FORMATS[fmt]))
                function = layer_function(model, LAYER)

                def convlens(n: int, fmt=fmt) -> dict:
                    return convlens_deepdream(server, viewer, FORMATS[fmt], n, args.octaves, args.job_timeout)

                def bare(n: int, model=model, function=function) -> dict:
                    return bare_deepdream(model, function, n, args.octaves)

                def report_run(repeat: int, side: str, run: dict, fmt=fmt) -> None:
                    print(f"  repeat {repeat} {fmt:<5} {side:<8} {describe(run)}", flush=True)

                # Warm-up: model load, ONNX Runtime session and graph building on the server, first calls here.
                convlens(2)
                bare(2)
                runs = sandwiched(
                    lambda c=convlens: c(args.steps), lambda b=bare: b(args.steps), args.repeats, report_run
                )
                results[fmt] = {**runs, "server_pixels": [server_image(server, runs["convlens"][0]["job"])]}
        finally:
            if viewer is not None:
                viewer.close()

    rows, details = report(results, args.steps, args.octaves)
    write_summary(args.json, rows, details)
    return 0


def describe(run: dict) -> str:
    if "its" in run:
        return f"{run['its']:.2f} it/s, {run['per_step_its']:.2f} it/s per step"
    return (
        f"{run['end_to_end_its']:.2f} it/s end to end, {run['per_step_its']:.2f} it/s per step,"
        f" {run['frames_received']} frames received"
    )


RATE_KEYS = {
    "convlens": ("end_to_end_its", "per_step_its"),
    "bare": ("its", "per_step_its"),
}
"""Each side's run keys for its end-to-end and per-step rates."""


def side_medians(sides: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    """``{side: {"e2e": median it/s, "step": median it/s}}`` of one case's runs (NaN for a side that did not run)."""
    return {
        side: {
            name: median([run[key] for run in sides.get(side, [])])
            for name, key in zip(("e2e", "step"), keys, strict=True)
        }
        for side, keys in RATE_KEYS.items()
    }


def case_ratios(sides: dict[str, list[dict]]) -> dict[str, list[float]]:
    """``{"e2e": [...], "step": [...]}``: each convlens run's rate over the bare runs beside it (``live.sandwiched``)."""
    (convlens_e2e, convlens_step), (bare_e2e, bare_step) = RATE_KEYS["convlens"], RATE_KEYS["bare"]
    return {
        "e2e": neighbour_ratios(sides, convlens_e2e, bare_e2e),
        "step": neighbour_ratios(sides, convlens_step, bare_step),
    }


def report(results: dict, steps: int, octaves: int) -> tuple[list[dict], dict]:
    """Print the medians and return ``bench/run.py``'s rows and the per-format details."""
    rows, details = [], {}
    print(
        f"\nDeepDream it/s, medians ({steps} steps x {octaves} octaves, {IMAGE}, layer {LAYER}); vs bare: the median of each"
        " convlens run over the bare runs beside it"
    )
    print(
        f"{'format':<6} {'side':<9} {'end to end':>10} {'per step':>9} {'vs bare e2e':>11} {'vs bare step':>12}"
        f" {'quartiles':>13}"
    )
    for fmt, sides in results.items():
        medians = side_medians(sides)
        bare = medians["bare"]
        ratios = case_ratios(sides)
        low, high = quartiles(ratios["step"])
        for side, values in medians.items():
            relative = (
                f" {median(ratios['e2e']):>11.3f} {median(ratios['step']):>12.3f} {low:>6.3f}-{high:<6.3f}"
                if side == "convlens"
                else ""
            )
            print(f"{fmt:<6} {side:<9} {values['e2e']:>10.2f} {values['step']:>9.2f}{relative}")
        server, reference = sides["server_pixels"][0].astype(int), sides["bare"][0]["pixels"].astype(int)
        diff = float(np.abs(server - reference).max())
        convlens = sides["convlens"]
        details[fmt] = {
            "medians_its": medians,
            "ratios": ratios,
            "before_first_step_s": median([run["before_first_step_s"] for run in convlens]),
            "after_last_step_s": median([run["after_last_step_s"] for run in convlens]),
            "max_pixel_difference": diff,
            "runs": {
                side: [{k: v for k, v in run.items() if k != "pixels"} for run in sides[side]]
                for side in ("convlens", "bare")
            },
        }
        for name, label in (("e2e", "end to end"), ("step", "per step")):
            rows.append(
                {
                    "figure": f"deepdream it/s, {fmt}, {label}: convlens vs bare torch",
                    "convlens": medians["convlens"][name],
                    "reference": bare[name],
                    "ratio": median(ratios[name]),
                }
            )
    for fmt, detail in details.items():
        e2e, step = (median(detail["ratios"][name]) for name in ("e2e", "step"))
        print(
            f"{fmt}: convlens overhead {100 * (1 / e2e - 1):+.1f}% time end to end,"
            f" {100 * (1 / step - 1):+.1f}% per step; before the first step"
            f" {detail['before_first_step_s']:.2f} s, after the last {detail['after_last_step_s']:.2f} s;"
            f" final image vs bare: max difference {detail['max_pixel_difference']:.0f}/255"
        )
    print_pooled(details)
    return rows, details


if __name__ == "__main__":
    sys.exit(main())
