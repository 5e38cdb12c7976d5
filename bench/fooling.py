"""Fooling images on the default model: queries to 99 % and to 99.6 % and the confidence reached, and gradient ascent's steps.

There is no reference tool to run beside it (the paper's Sferes/Caffe code is not a library), so this script
reports numbers, not ratios. The default model (``efficientnet_lite0.onnx``, its logits through ONNX Runtime),
``--classes`` (default king penguin and starfish, two of the paper's), one run per class and seed (``--seeds``),
at most ``--queries`` pictures each:

- ``fooling_evolution`` with NES on a direct ``--resolution``² grid of pixel logits, from grey;
- ``fooling_evolution`` with NES over the CPPN: CMA-ES on CPPN weights for ``--pattern-queries``, then NES;
- ``fooling_evolution`` with CMA-ES on CPPN weights alone, the approach before NES, ``--before-queries`` each
  (default ``--queries``, at most 6,000);
- ``fooling_gradient``, all classes in one batch, until 99.6 % or ``--steps``.

``--sides`` picks among them (``direct``, ``cppn``, ``before``, ``gradient``; default all).

Each run goes through ``convlens.runner`` in a fresh thread, as a job. Printed per class and seed: the confidence
reached, the queries (or steps) until 99 % and until 99.6 % (``-``: not within the budget), and the seconds.
Run: ``.venv/bin/python bench/fooling.py [--queries 20000] [--seeds 0,1] [--classes "king penguin, starfish"]``.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from live import ensure_models, exit_on_sigterm, in_fresh_thread, machine_note, write_summary

MODEL = "efficientnet_lite0.onnx"
CLASSES = "king penguin, starfish"
BLANK = np.zeros((8, 8, 3), dtype=np.uint8)
SIDES = ("direct", "cppn", "before", "gradient")


def run(method_name: str, model, seed: int = 0, **params) -> tuple[float, dict]:
    """Seconds and result data of one run of ``method_name`` on ``model``."""
    from convlens.events import Result
    from convlens.runner import iterate, prepare_run
    from convlens.testing import find_method

    method = find_method(method_name)

    def job() -> tuple[float, dict]:
        ctx = prepare_run(method, model, BLANK, params, seed=seed)
        started = time.perf_counter()
        result = [event for event in iterate(method, ctx) if isinstance(event, Result)][-1]
        return time.perf_counter() - started, result.data

    return in_fresh_thread(job)


def shown(value) -> str:
    return "-" if value is None else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=20000, help="most model queries per class and run")
    parser.add_argument("--classes", default=CLASSES, help="comma-separated labels or indices")
    parser.add_argument("--seeds", default="0,1", help="comma-separated run seeds")
    parser.add_argument("--resolution", type=int, default=16, help="NES grid side")
    parser.add_argument("--population", type=int, default=32)
    parser.add_argument("--pattern-queries", type=int, default=2000, help="CMA-ES on the CPPN before NES")
    parser.add_argument(
        "--before-queries",
        type=int,
        help="CMA-ES + CPPN alone (default: --queries, at most 6000)",
    )
    parser.add_argument("--steps", type=int, default=200, help="gradient ascent's most steps")
    parser.add_argument("--sides", default=",".join(SIDES), help="comma-separated, of " + ", ".join(SIDES))
    parser.add_argument("--json", help="write the summary rows here (bench/run.py)")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.sides.split(",")]
    if not set(chosen) <= set(SIDES):
        parser.error(f"--sides: each of {', '.join(SIDES)}")
    exit_on_sigterm()
    from convlens.models.store import load_model

    model = load_model(ensure_models() / MODEL)
    classes = [name.strip() for name in args.classes.split(",")]
    seeds = [int(seed) for seed in args.seeds.split(",")]
    print(f"{MODEL}, {machine_note()}")
    rows: list[dict] = []
    details: dict = {}

    def heading(side: str, unit: str) -> None:
        print(f"\n{side}")
        print(
            f"  {'class':<18} {'seed':>4} {'confidence':>10} {unit + ' to 99 %':>16} "
            f"{unit + ' to 99.6 %':>18} {'seconds':>8}",
            flush=True,
        )

    def report(side: str, runs: list[tuple[int, float, dict]], unit: str) -> None:
        """Print each run's row as it ends, and keep it for the summary."""
        details.setdefault(side, [])
        for seed, seconds, entry in runs:
            details[side].append({"seed": seed, "seconds": seconds, **entry})
            to_99, to_bar = entry.get(f"{unit}_to_99"), entry.get(f"{unit}_to_confidence")
            print(
                f"  {entry['label']:<18} {seed:>4} {entry['confidence']:>10.4f} {shown(to_99):>16} "
                f"{shown(to_bar):>18} {seconds:>8.1f}",
                flush=True,
            )
            figure = f"{side}, {entry['label']}, seed {seed}"
            rows.append({"figure": f"{figure}: {unit} to 99.6 %", "convlens": to_bar, "unit": unit})
            rows.append({"figure": f"{figure}: confidence", "convlens": entry["confidence"]})

    common = {"population": args.population, "confidence": 0.996}
    if args.before_queries is None:
        args.before_queries = min(args.queries, 6000)
    sides = {
        "direct": (
            f"NES + direct {args.resolution}², at most {args.queries} queries",
            {"algorithm": "nes", "encoding": "direct", "max_queries": args.queries},
        ),
        "cppn": (
            f"CMA-ES + CPPN for {args.pattern_queries}, then NES {args.resolution}², at most {args.queries}",
            {"algorithm": "nes", "encoding": "cppn", "max_queries": args.queries},
        ),
        "before": (
            f"CMA-ES + CPPN alone (before NES), {args.before_queries} queries",
            {"algorithm": "cma_es", "encoding": "cppn", "max_queries": args.before_queries},
        ),
    }
    for key in chosen:
        if key not in sides:
            continue
        side, params = sides[key]
        heading(side, "queries")
        for name in classes:
            for seed in seeds:
                seconds, data = run(
                    "fooling_evolution",
                    model,
                    seed,
                    targets=name,
                    resolution=args.resolution,
                    pattern_queries=args.pattern_queries,
                    **params,
                    **common,
                )
                report(side, [(seed, seconds, entry) for entry in data["targets"]], "queries")

    if "gradient" in chosen:
        seconds, data = run("fooling_gradient", model, targets=", ".join(classes), max_steps=args.steps)
        side = f"gradient ascent, at most {args.steps} steps"
        heading(side, "steps")
        report(side, [(0, seconds, entry) for entry in data["targets"]], "steps")
    write_summary(args.json, rows, details)
    return 0


if __name__ == "__main__":
    sys.exit(main())
