"""The code map of 10,000 images: convlens's ``code_map`` (t-SNE, streamed) versus openTSNE run on its own.

The data set: ``--images`` (default 10,000) 64-px crops of scikit-image's ten photographs that the built-in
``skimage_crops`` uses, at its four scales, at seeded places (an in-memory data set like ``skimage_crops``, a
thousand crops a photograph rather than 300). The codes: the default model's (``efficientnet_lite0.onnx``)
penultimate code, 1,280 numbers an image, real activations, computed once into convlens's feature store
(``var/features`` in a checkout) before any clock starts and read from it by every run.

convlens side: the ``code_map`` method run in-process through ``convlens.runner`` (what a job does minus
streaming), t-SNE with its defaults (perplexity 30, 250 early-exaggeration iterations, 500 more, PCA start,
seed 0), a frame and the KL divergence every ``--every`` iterations (default 25, the method's), the thumbnails
loaded in the background, the final 1,024-px map and the neighbour hit. Timed from the event that follows the
feature store's last (the features are ready) to the ``Result``; also the delay to its first frame.

Reference side: ``openTSNE.TSNE`` with the same settings and ``n_jobs`` (``--n-jobs``, default 2), ``fit`` on
the same codes, no callbacks. The two layouts must keep ≥ 0.9 of each other's 10-nearest-neighbour sets or
the script fails. The sides alternate (A B, then B A, ...), each run in a fresh thread as a job runs;
medians are printed. Target: convlens ≤ 1.1× openTSNE's time.
Run: ``.venv/bin/python bench/code_map.py [--images 10000] [--repeats 2] [--n-jobs 2]``.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from live import ensure_models, exit_on_sigterm, in_fresh_thread, machine_note, median, write_summary

MODEL = "efficientnet_lite0.onnx"
NEIGHBOURS = 10


def crops_dataset(count: int):
    """At least ``count`` 64-px crops of the ten photographs, made as the built-in ``skimage_crops`` is (40 a
    photograph per crop scale there, and ``count`` / 40 here)."""
    from convlens_plugins.basics.datasets import CROP_FRACTIONS, CROP_PHOTOS, photo_crops

    per_scale = -(-count // (len(CROP_PHOTOS) * len(CROP_FRACTIONS)))
    return photo_crops(per_scale, id=f"bench_crops_{count}")


def run_convlens(model, dataset, store, params: dict) -> dict:
    """Seconds from features ready to the Result, to the first frame, and the layout."""
    from convlens.events import Frame, Log, Result
    from convlens.runner import iterate, prepare_run
    from convlens_plugins.dataset.code_map import CODE_MAP

    ctx = prepare_run(
        CODE_MAP, model, np.zeros((8, 8, 3), np.uint8), params, datasets=lambda _id: dataset, features=store
    )
    ready = first_frame = None
    for event in iterate(CODE_MAP, ctx):
        if isinstance(event, Log) and ready is None:
            ready = time.perf_counter()
        elif isinstance(event, Frame) and first_frame is None:
            first_frame = time.perf_counter()
        elif isinstance(event, Result):
            done = time.perf_counter()
            return {
                "seconds": done - ready,
                "first_frame_s": first_frame - ready,
                "positions": event.arrays["positions"],
            }
    raise RuntimeError("code_map ended without a Result")


def run_opentsne(codes: np.ndarray, n_jobs: int) -> tuple[float, np.ndarray]:
    from openTSNE import TSNE

    started = time.perf_counter()
    embedding = TSNE(
        perplexity=30.0,
        early_exaggeration_iter=250,
        n_iter=500,
        initialization="pca",
        random_state=0,
        n_jobs=n_jobs,
    ).fit(codes)
    return time.perf_counter() - started, np.asarray(embedding)


def kept_neighbours(a: np.ndarray, b: np.ndarray) -> float:
    from sklearn.neighbors import NearestNeighbors

    def sets(positions: np.ndarray) -> np.ndarray:
        return NearestNeighbors(n_neighbors=NEIGHBOURS + 1).fit(positions).kneighbors(positions)[1][:, 1:]

    return float(np.mean([len(set(x) & set(y)) / NEIGHBOURS for x, y in zip(sets(a), sets(b), strict=True)]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--json", help="write the summary rows here (for bench/run.py)")
    args = parser.parse_args(argv)
    exit_on_sigterm()

    from convlens.models.store import ModelStore
    from convlens.runner import default_feature_store

    model = ModelStore([ensure_models()]).get(MODEL)
    dataset = crops_dataset(args.images)
    store = default_feature_store()
    started = time.perf_counter()
    features = in_fresh_thread(lambda: store.features(model, dataset))
    print(
        f"codes of {len(dataset)} crops ({features.codes.shape[1]} numbers each, {features.engine}): "
        f"{time.perf_counter() - started:.1f} s (0 when already stored)",
        flush=True,
    )
    params = {"dataset": dataset.id, "n_jobs": args.n_jobs, "every": args.every}

    convlens, reference, agreement = [], [], []
    for repeat in range(args.repeats):
        order = ("convlens", "opentsne") if repeat % 2 == 0 else ("opentsne", "convlens")
        for side in order:
            if side == "convlens":
                run = in_fresh_thread(lambda: run_convlens(model, dataset, store, params))
                convlens.append(run)
                print(
                    f"convlens code_map: {run['seconds']:.1f} s, first frame after {run['first_frame_s']:.2f} s",
                    flush=True,
                )
            else:
                seconds, positions = in_fresh_thread(lambda: run_opentsne(features.codes, args.n_jobs))
                reference.append((seconds, positions))
                print(f"openTSNE alone: {seconds:.1f} s", flush=True)
    for run, (_, positions) in zip(convlens, reference, strict=True):
        agreement.append(kept_neighbours(run["positions"], positions))

    ours = median([run["seconds"] for run in convlens])
    theirs = median([seconds for seconds, _ in reference])
    first = median([run["first_frame_s"] for run in convlens])
    print(
        f"\ncode map of {len(dataset)} codes, t-SNE (perplexity 30, 250 + 500 iterations, n_jobs {args.n_jobs})"
    )
    print(machine_note())
    print(
        f"convlens code_map (a frame every {args.every} iterations): {ours:.1f} s; first frame after {first:.2f} s"
    )
    print(f"openTSNE alone: {theirs:.1f} s")
    print(f"convlens / openTSNE time: {ours / theirs:.3f}x (target <= 1.1)")
    print(
        f"10-nearest-neighbour sets kept between the two layouts: {', '.join(f'{a:.3f}' for a in agreement)}"
    )
    rows = [
        {
            "figure": f"code map, {len(dataset)} codes (s, lower is better; ratio openTSNE/convlens)",
            "convlens": ours,
            "reference": theirs,
            "ratio": theirs / ours,
            "unit": "s",
        }
    ]
    write_summary(args.json, rows, {"first_frame_s": first, "kept": agreement})
    if min(agreement) < 0.9:
        print("the layouts disagree: fewer than 0.9 of the neighbour sets kept", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
