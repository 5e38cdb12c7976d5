"""The digits demo's 2-layer net (64 → 512 ReLU → 10) against scikit-learn's ``MLPClassifier``: time and accuracy.

Issue 22's target: ≥ 97 % test accuracy in under 10 s on 2 cores. Both sides train on the same split
(``load_digits_split(seed)``: scikit-learn's digits scaled to [0, 1], stratified 80/20) with the same recipe:
one hidden layer of 512 ReLUs, Adam at learning rate 1e-3, minibatches of 32, 30 epochs.

- *convlens*: the ``digits`` method through ``convlens.runner`` (``prepare_run`` + ``iterate``, what a job does
  minus streaming) at its defaults but for ``layers="2"`` (the default trains the 1-layer net beside it), every
  frame, metric and the result (confusion matrix, misclassified grid, the trained net) built; timed from the
  start of ``iterate`` to its ``Result``. Its test accuracy is the result's. Its steps run on one thread
  (:mod:`convlens.thread_limit`), as the method runs nets this small.
- *scikit-learn*: ``MLPClassifier(hidden_layer_sizes=(512,), solver="adam", learning_rate_init=1e-3,
  batch_size=32, max_iter=30, alpha=0, n_iter_no_change=30, tol=0)``: the same 30 epochs without its early stop,
  no L2; timed around ``fit``; accuracy by ``score`` on the test split.

Each run is a fresh thread, as a job is; the sides alternate (the order reversed each repeat); medians reported.
Run: ``.venv/bin/python bench/digits.py [--repeats 3] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from live import exit_on_sigterm, in_fresh_thread, machine_note, median, write_summary

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's plugins/ package

TARGET_ACCURACY = 0.97
TARGET_SECONDS = 10.0


def convlens_side(seed: int) -> tuple[float, float]:
    """(seconds, test accuracy) of the ``digits`` method's 2-layer net at the defaults."""
    import numpy as np

    from convlens import runner
    from convlens.events import Result
    from convlens.testing import find_method, make_tiny_model

    method = find_method("digits")
    picture = np.zeros((8, 8, 3), np.uint8)
    ctx = runner.prepare_run(method, make_tiny_model(), picture, {"layers": "2"}, seed=seed)
    began = time.perf_counter()
    for event in runner.iterate(method, ctx):
        if isinstance(event, Result):
            return time.perf_counter() - began, float(event.data["nets"]["two_layer"]["test_accuracy"])
    raise RuntimeError("the digits method ended without a result")


def sklearn_side(seed: int) -> tuple[float, float]:
    """(seconds, test accuracy) of ``MLPClassifier`` with the same recipe on the same split."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    from convlens_plugins.training.digits import load_digits_split

    train_x, train_y, test_x, test_y, _ = load_digits_split(seed)
    classifier = MLPClassifier(
        hidden_layer_sizes=(512,),
        solver="adam",
        learning_rate_init=1e-3,
        batch_size=32,
        max_iter=30,
        alpha=0.0,
        tol=0.0,
        n_iter_no_change=30,
        random_state=seed,
    )
    began = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # 30 epochs is the recipe, not a failure
        classifier.fit(train_x, train_y)
    seconds = time.perf_counter() - began
    return seconds, float(classifier.score(test_x, test_y))


def main() -> int:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write the summary rows here (for bench/run.py)")
    args = parser.parse_args()

    from convlens.runtime import configure_threads, tune_malloc

    tune_malloc()
    configure_threads()
    sides = {"convlens": convlens_side, "scikit-learn": sklearn_side}
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    print(f"digits, 2-layer net, seed {args.seed}; {machine_note()}")
    for repeat in range(args.repeats):
        order = list(sides) if repeat % 2 == 0 else list(reversed(sides))
        for name in order:
            seconds, accuracy = in_fresh_thread(lambda side=sides[name]: side(args.seed))
            runs[name].append((seconds, accuracy))
            print(f"  {name:>12}: {seconds:6.2f} s, test accuracy {accuracy:.4f}", flush=True)
    times = {name: median([s for s, _ in values]) for name, values in runs.items()}
    accuracies = {name: median([a for _, a in values]) for name, values in runs.items()}
    print(f"{'side':>14}  {'median s':>9}  {'test accuracy':>13}")
    for name in sides:
        print(f"{name:>14}  {times[name]:9.2f}  {accuracies[name]:13.4f}")
    ratio = times["scikit-learn"] / times["convlens"]
    print(f"speed ratio (scikit-learn time / convlens time): {ratio:.2f}x")
    met = accuracies["convlens"] >= TARGET_ACCURACY and times["convlens"] < TARGET_SECONDS
    print(
        f"target ≥ {TARGET_ACCURACY:.0%} in < {TARGET_SECONDS:g} s: {'met' if met else 'NOT met'} "
        f"({machine_note()})"
    )
    write_summary(
        args.json,
        [
            {
                "figure": "digits 2-layer training time (s)",
                "convlens": times["convlens"],
                "reference": times["scikit-learn"],
                "ratio": ratio,
                "unit": "s",
            }
        ],
        {"runs": runs, "accuracy": accuracies},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
