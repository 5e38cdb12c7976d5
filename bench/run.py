"""Run every bench script in turn and print one table: figure, convlens, reference, ratio (convlens/reference).

Each script starts its own servers on 127.0.0.1 and stops them; each runs under a time limit, after which it
is sent SIGTERM (its servers are stopped by its ``finally`` blocks) and then killed.
Run: ``make bench`` or ``.venv/bin/python bench/run.py [--only stream_fps] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent

SCRIPTS = {
    "deepdream_overhead": {"limit_s": 1800, "quick": ["--steps", "10", "--repeats", "1"]},
    "stream_fps": {"limit_s": 1200, "quick": ["--frames", "40", "--repeats", "1"]},
    "gradients": {"limit_s": 1800, "quick": ["--repeats", "1", "--formats", "pt2", "--batch-sizes", "25"]},
    "occlusion": {"limit_s": 1800, "quick": ["--repeats", "1", "--batch-sizes", "32"]},
    "optimisation_overhead": {
        "limit_s": 1800,
        "quick": ["--steps", "10", "--repeats", "1", "--formats", "onnx"],
    },
    "interleaved_overhead": {
        "limit_s": 1800,
        "quick": [
            "--steps",
            "48",
            "--block",
            "4",
            "--repeats",
            "1",
            "--formats",
            "pt",
            "--methods",
            "deepdream,class_model",
        ],
    },
    "streaming_cost": {"limit_s": 900, "quick": ["--windows", "1", "--window-s", "0.5"]},
    "feature_vis": {"limit_s": 900, "quick": ["--repeats", "1", "--steps", "32"]},
    "browser_viewer": {"limit_s": 900, "quick": ["--repeats", "1"]},
    "feature_store": {"limit_s": 1800, "quick": ["--images", "200"]},
    "code_map": {"limit_s": 2400, "quick": ["--images", "2000", "--repeats", "1"]},
    "code_map_fps": {"limit_s": 900, "quick": ["--repeats", "1", "--seconds", "3"]},
    "pgd": {"limit_s": 900, "quick": ["--repeats", "1"]},
    "adversarial_patch": {"limit_s": 1800, "quick": ["--steps", "20"]},
    "fooling": {"limit_s": 1800, "quick": ["--queries", "64", "--steps", "20"]},
    "digits": {"limit_s": 900, "quick": ["--repeats", "1"]},
    "deep_image_prior": {"limit_s": 900, "quick": ["--steps", "20", "--repeats", "1"]},
    "bagnet": {"limit_s": 900, "quick": ["--repeats", "1"]},
}
"""Script name → time limit and the arguments of a quick run."""


def run_script(name: str, limit_s: float, extra: list[str]) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="convlens-bench-") as scratch:
        summary = Path(scratch) / "summary.json"
        command = [sys.executable, str(BENCH / f"{name}.py"), "--json", str(summary), *extra]
        print(f"\n=== {name}: {' '.join(command[1:])}", flush=True)
        process = subprocess.Popen(command, cwd=BENCH.parent)
        try:
            process.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            print(f"{name}: over its {limit_s:.0f} s limit; stopping it", file=sys.stderr)
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        finally:
            if process.poll() is None:
                process.terminate()
                process.wait()
        if process.returncode != 0 or not summary.exists():
            return [{"figure": f"{name}: failed (exit {process.returncode})"}]
        return json.loads(summary.read_text())["rows"]


def number(value) -> str:
    return f"{value:.3g}" if isinstance(value, float | int) else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=sorted(SCRIPTS), help="run just this script")
    parser.add_argument("--quick", action="store_true", help="fewer steps and one repeat: a smoke test")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))  # so `finally` stops the script
    started = time.strftime("%Y-%m-%d %H:%M")
    rows: list[dict] = []
    for name in args.only or list(SCRIPTS):
        spec = SCRIPTS[name]
        rows += run_script(name, spec["limit_s"], spec["quick"] if args.quick else [])

    width = max(len(row["figure"]) for row in rows)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nconvlens bench, {started}, {os.cpu_count()} CPUs, load average now {load:.1f}")
    print(f"{'figure':<{width}}  {'convlens':>9}  {'reference':>9}  {'ratio':>6}")
    for row in rows:
        print(
            f"{row['figure']:<{width}}  {number(row.get('convlens')):>9}  {number(row.get('reference')):>9}"
            f"  {number(row.get('ratio')):>6}"
        )
    return 1 if any("failed" in row["figure"] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
