"""Fooling images on the default model: queries to 99 % and the confidence reached, and gradient ascent's steps.

There is no reference tool to run beside it (the paper's Sferes/Caffe code is not a library), so this script
reports numbers, not ratios. The default model (``efficientnet_lite0.onnx``, its logits through ONNX Runtime) and
the paper's classes (king penguin, starfish, baseball, electric guitar), the run's seed 0:

- ``fooling_evolution`` with CMA-ES on CPPN weights, one class per run, ``--queries`` pictures each;
- ``fooling_evolution`` with MAP-Elites on a direct genome (``--resolution``², upsampled), all classes in one
  run with ``--queries`` × the number of classes pictures, the same budget per class;
- ``fooling_gradient``, all classes in one batch, until 99.6 % or ``--steps``.

Each run goes through ``convlens.runner`` in a fresh thread, as a job. Printed per class: the confidence
reached, the queries (or steps) until 99 % and until 99.6 % (``-``: not within the budget), and the seconds.
Run: ``.venv/bin/python bench/fooling.py [--queries 2000] [--classes "king penguin, starfish"]``.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from live import ensure_models, exit_on_sigterm, in_fresh_thread, machine_note, write_summary

MODEL = "efficientnet_lite0.onnx"
CLASSES = "king penguin, starfish, baseball, electric guitar"
BLANK = np.zeros((8, 8, 3), dtype=np.uint8)


def run(method_name: str, model, **params) -> tuple[float, dict]:
    """Seconds and result data of one run of ``method_name`` on ``model``."""
    from convlens.events import Result
    from convlens.runner import iterate, prepare_run
    from convlens.testing import find_method

    method = find_method(method_name)

    def job() -> tuple[float, dict]:
        ctx = prepare_run(method, model, BLANK, params, seed=0)
        started = time.perf_counter()
        result = [event for event in iterate(method, ctx) if isinstance(event, Result)][-1]
        return time.perf_counter() - started, result.data

    return in_fresh_thread(job)


def shown(value) -> str:
    return "-" if value is None else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=2000, help="model queries per class (evolution)")
    parser.add_argument("--classes", default=CLASSES, help="comma-separated labels or indices")
    parser.add_argument("--resolution", type=int, default=32, help="direct genome side (MAP-Elites)")
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200, help="gradient ascent's most steps")
    parser.add_argument("--json", help="write the summary rows here (bench/run.py)")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    from convlens.models.store import load_model

    model = load_model(ensure_models() / MODEL)
    classes = [name.strip() for name in args.classes.split(",")]
    print(f"{MODEL}, seed 0, {machine_note()}")
    rows: list[dict] = []
    details: dict = {}

    def report(side: str, seconds: float, entries: list[dict], unit: str) -> None:
        details[side] = {"seconds": seconds, "targets": entries}
        print(f"\n{side} ({seconds:.1f} s)")
        print(f"  {'class':<18} {'confidence':>10} {unit + ' to 99 %':>16} {unit + ' to 99.6 %':>18}")
        for entry in entries:
            to_99 = entry.get(f"{unit}_to_99")
            to_bar = entry.get(f"{unit}_to_confidence")
            print(
                f"  {entry['label']:<18} {entry['confidence']:>10.4f} {shown(to_99):>16} {shown(to_bar):>18}"
            )
            rows.append(
                {"figure": f"{side}, {entry['label']}: {unit} to 99 %", "convlens": to_99, "unit": unit}
            )
            rows.append({"figure": f"{side}, {entry['label']}: confidence", "convlens": entry["confidence"]})

    common = {"population": args.population, "confidence": 0.996}
    entries, total = [], 0.0
    for name in classes:
        seconds, data = run(
            "fooling_evolution",
            model,
            targets=name,
            algorithm="cma_es",
            encoding="cppn",
            max_queries=args.queries,
            **common,
        )
        entries += data["targets"]
        total += seconds
    report(f"CMA-ES + CPPN, {args.queries} queries a class", total, entries, "queries")

    seconds, data = run(
        "fooling_evolution",
        model,
        targets=", ".join(classes),
        algorithm="map_elites",
        encoding="direct",
        resolution=args.resolution,
        max_queries=args.queries * len(classes),
        **common,
    )
    report(
        f"MAP-Elites + direct {args.resolution}², {args.queries * len(classes)} queries in all",
        seconds,
        data["targets"],
        "queries",
    )

    seconds, data = run("fooling_gradient", model, targets=", ".join(classes), max_steps=args.steps)
    report(f"gradient ascent, at most {args.steps} steps", seconds, data["targets"], "steps")
    write_summary(args.json, rows, details)
    return 0


if __name__ == "__main__":
    sys.exit(main())
