"""Frames per second of ``<convlens-code-map>`` panning 10,000 thumbnails in headless Chromium (issue 19: ≥ 30).

A data-set folder of ``--points`` 32-px PNGs (the ``skimage_crops`` crops in turn, labelled by photograph) is
written to a temporary folder and served by ``convlens serve`` (``CONVLENS_DATASETS_DIRS``). The page is the
server's ``embed.html`` with one ``<convlens-code-map>`` (1200 x 800 CSS px) added: it loads the set's atlases
(``GET /api/datasets/<id>/atlas``, 4,096 thumbnails each), is given ``--points`` seeded random positions, and is
then panned a few pixels at every animation frame for ``--seconds``; the frames it drew over the time taken
are its frames per second. *Reference*: the same loop with no points on the map (the page's own
requestAnimationFrame rate, 60 in headless Chromium): the ratio is the share of the frames the map keeps.

Also measured (``--latency-dataset``, default ``digits``; ``""`` skips it): a ``code_map`` job (t-SNE) started
with the app page open on it, and the time in the page from its log line saying the codes are ready (the feature
store's work done) to the map's first drawn points (the issue's "first positions in the browser within 2 s").

Headless Chromium here has no GPU: its WebGL is SwiftShader, a software renderer on the CPU, so the figure is
a floor for a machine with a graphics card. Run: ``.venv/bin/python bench/code_map_fps.py [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from live import convlens_server, ensure_models, exit_on_sigterm, http, machine_note, median
from live import write_summary as write_json
from PIL import Image

from convlens.testing import CHROMIUM_ARGS, find_chromium

DATASET = "map_points"
MODEL = "efficientnet_lite0.onnx"
PAN = """async ([seconds, points]) => {
  const map = document.querySelector("convlens-code-map");
  const positions = new Float32Array(2 * points);
  let state = 12345;  // a seeded linear congruential generator: the same layout every run
  for (let i = 0; i < positions.length; i++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    positions[i] = state / 2 ** 32;
  }
  map.setPositions(positions);
  await new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)));
  const first = map.frames;
  const start = performance.now();
  let step = 0;
  await new Promise((done) => {
    const pan = () => {
      step += 1;
      map.panBy(4 * Math.cos(step / 30), 3 * Math.sin(step / 40));
      if (performance.now() - start < seconds * 1000) requestAnimationFrame(pan);
      else done();
    };
    requestAnimationFrame(pan);
  });
  return { frames: map.frames - first, seconds: (performance.now() - start) / 1000, drawn: map.count };
}"""


WATCH = """() => {
  const find = (root, selector) => {
    const hit = root.querySelector(selector);
    if (hit) return hit;
    for (const element of root.querySelectorAll("*"))
      if (element.shadowRoot) {
        const deep = find(element.shadowRoot, selector);
        if (deep) return deep;
      }
    return null;
  };
  const watch = () => {
    const log = find(document, '[data-testid="log"]');
    if (!window.codesAt && log && log.textContent.includes(" codes of "))
      window.codesAt = performance.now();
    const map = find(document, "convlens-code-map");
    if (!window.pointsAt && map && Number(map.dataset.points) > 0 && Number(map.dataset.frames) > 0)
      window.pointsAt = performance.now();
    if (!window.pointsAt) requestAnimationFrame(watch);
  };
  requestAnimationFrame(watch);
}"""


def first_points_delay(page, url: str, dataset: str) -> float:
    """Seconds in the page from the code_map job's "codes ready" log line to its map's first drawn points."""
    params = {"dataset": dataset, "early_iterations": 250, "iterations": 250, "every": 25}
    body = {"method": "code_map", "model": MODEL, "image": "chelsea", "params": params, "seed": 0}
    answer = http().post(f"{url}/api/jobs", json=body, timeout=60)
    answer.raise_for_status()
    job = answer.json()["id"]
    try:
        page.goto(f"{url}/#job={job}")
        page.evaluate(WATCH)
        page.wait_for_function("() => window.pointsAt", timeout=1_200_000, polling=500)
        codes, points = page.evaluate("() => [window.codesAt, window.pointsAt]")
        return (points - codes) / 1000
    finally:
        http().post(f"{url}/api/jobs/{job}/stop", timeout=60)


def write_dataset(root: Path, count: int) -> None:
    """``count`` 32-px PNGs of the skimage_crops crops, in turn, in one folder per photograph."""
    from convlens.plugins import get_plugin_manager, registered_datasets

    crops = next(d for d in registered_datasets(get_plugin_manager()) if d.id == "skimage_crops")
    items = crops.items()
    for i in range(count):
        index = i % len(items)
        folder = root / DATASET / (items[index].label or "none")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(crops.load(index)).resize((32, 32), Image.BOX).save(folder / f"{i:05d}.png")


def measure(page, url: str, points: int, seconds: float) -> dict:
    page.goto(f"{url}/embed.html")
    page.evaluate(
        """(dataset) => {
          const map = document.createElement("convlens-code-map");
          map.setAttribute("dataset", dataset);
          map.style.width = "1200px";
          map.style.setProperty("--cl-code-map-height", "800px");
          document.body.replaceChildren(map);
        }""",
        DATASET,
    )
    page.wait_for_function(
        "() => document.querySelector('convlens-code-map').dataset.atlases", timeout=600_000
    )
    return page.evaluate(PAN, [seconds, points])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--latency-dataset", default="digits", help='code_map job for the first-points delay; ""'
    )
    parser.add_argument("--json", default=None, help="write the summary rows here (for bench/run.py)")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    from playwright.sync_api import sync_playwright

    models = ensure_models()
    map_fps, bare_fps = [], []
    with tempfile.TemporaryDirectory(prefix="convlens-code-map-fps-") as scratch:
        write_dataset(Path(scratch), args.points)
        env = {"CONVLENS_DATASETS_DIRS": scratch}
        with convlens_server(models, env=env) as server, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=find_chromium(), args=list(CHROMIUM_ARGS))
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            print(f"WebGL renderer: {renderer(page, server.url)}")
            for repeat in range(args.repeats):
                for points, into in ((args.points, map_fps), (0, bare_fps))[:: 1 if repeat % 2 == 0 else -1]:
                    run = measure(page, server.url, points, args.seconds)
                    fps = run["frames"] / run["seconds"]
                    into.append(fps)
                    print(
                        f"{run['drawn']:>6} thumbnails: {run['frames']} frames in {run['seconds']:.2f} s, {fps:.1f}/s"
                    )
            delay = (
                first_points_delay(page, server.url, args.latency_dataset) if args.latency_dataset else None
            )
            browser.close()
    shown, bare = median(map_fps), median(bare_fps)
    print(f"\n{machine_note()}; headless Chromium, software WebGL (SwiftShader, no GPU)")
    print(f"panning {args.points} thumbnails: {shown:.1f} frames/s (median of {len(map_fps)})")
    print(f"the same page with none: {bare:.1f} frames/s; ratio {shown / bare:.2f}")
    if delay is not None:
        print(
            f"first points drawn {delay:.2f} s after the page learned the codes were ready ({args.latency_dataset})"
        )
    write_json(
        args.json,
        [
            {
                "figure": f"code map fps, {args.points} thumbnails (SwiftShader)",
                "convlens": shown,
                "reference": bare,
                "ratio": shown / bare,
                "unit": "frames/s",
            }
        ],
        {"map_fps": map_fps, "bare_fps": bare_fps, "first_points_s": delay, "cpus": os.cpu_count()},
    )
    return 0 if shown >= 30 else 1


def renderer(page, url: str) -> str:
    page.goto(f"{url}/embed.html")
    return page.evaluate(
        """() => {
          const gl = document.createElement("canvas").getContext("webgl");
          if (!gl) return "none";
          const info = gl.getExtension("WEBGL_debug_renderer_info");
          return info ? gl.getParameter(info.UNMASKED_RENDERER_WEBGL) : gl.getParameter(gl.RENDERER);
        }"""
    )


if __name__ == "__main__":
    sys.exit(main())
