"""What a real browser watching a job costs the job: style transfer it/s with the page open in Chromium, and with
no viewer at all, on the same server.

The viewer is the convlens page itself in headless Debian Chromium (Playwright, the flags the browser tests
use, a 1400x1000 window): it draws every frame it is sent, the metrics chart, the progress bar and the
step counter, as a person's browser would. On a machine where the browser shares the cores with the job,
its rendering takes CPU from the job's steps; this measures how much.

Each run starts a style transfer from the page (chelsea, brick, 128 px, Adam, a frame every step), lets it
warm up, then reads the job's progress (step and server time) twice ``--window`` seconds apart: that is the
run's it/s. *No viewer*: the page is navigated away after the start, so the job streams to nobody. The two
alternate and medians are reported. Run: ``.venv/bin/python bench/browser_viewer.py [--repeats 4]``.
"""

from __future__ import annotations

import argparse
import sys
import time

from live import (
    convlens_server,
    ensure_models,
    exit_on_sigterm,
    http,
    machine_note,
    median,
    stream_note,
)
from live import write_summary as write_json

from convlens.testing import CHROMIUM_ARGS, find_chromium

MODEL = "efficientnet_lite0.onnx"
STEPS = 2000
"""More than a run needs: each run is stopped after its measurement."""


def start_from_page(page, url: str, size: int) -> str:
    """Start style transfer from the page; the new job's id."""
    page.goto(url + "/")
    page.get_by_test_id("model-select").locator(f'option[value="{MODEL}"]').wait_for(state="attached")
    page.get_by_test_id("model-select").select_option(MODEL)
    page.locator('[data-testid="image-thumb"][data-image="chelsea"]').click()
    page.locator('[data-testid="method"][data-method="style_transfer"]').click()
    page.get_by_test_id("param-style").select_option("brick")
    page.get_by_test_id("param-size").fill(str(size))
    page.get_by_test_id("param-steps").fill(str(STEPS))
    page.get_by_test_id("run").click()
    page.get_by_test_id("step").filter(has_text="/").wait_for(timeout=120_000)
    return http().get(f"{url}/api/jobs", timeout=30).json()["jobs"][0]["id"]


def measure(page, url: str, size: int, watched: bool, warm_up: float, window: float) -> float:
    """One run's it/s by the server's clock, with the page watching or navigated away."""
    job = start_from_page(page, url, size)
    if not watched:
        page.goto("about:blank")
    try:
        time.sleep(warm_up)
        first = http().get(f"{url}/api/jobs/{job}", timeout=30).json()["progress"]
        time.sleep(window)
        last = http().get(f"{url}/api/jobs/{job}", timeout=30).json()["progress"]
    finally:
        http().post(f"{url}/api/jobs/{job}/stop", timeout=30)
        page.goto("about:blank")
    return (last["step"] - first["step"]) / (last["time"] - first["time"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--warm-up", type=float, default=4.0)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--json", default=None, help="write the summary rows here (for bench/run.py)")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    from playwright.sync_api import sync_playwright

    print(f"browser_viewer: style transfer {args.size} px; {machine_note()}; {stream_note()}", flush=True)
    runs: dict[str, list[float]] = {"page open": [], "no viewer": []}
    with convlens_server(ensure_models()) as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=find_chromium(), args=list(CHROMIUM_ARGS))
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            for repeat in range(args.repeats):
                order = ("page open", "no viewer") if repeat % 2 == 0 else ("no viewer", "page open")
                for side in order:
                    rate = measure(
                        page, server.url, args.size, side == "page open", args.warm_up, args.window
                    )
                    runs[side].append(rate)
                    print(f"  repeat {repeat + 1} {side:<10} {rate:.2f} it/s", flush=True)
        finally:
            browser.close()
    watched, alone = median(runs["page open"]), median(runs["no viewer"])
    print(
        f"\nstyle transfer it/s, medians: page open {watched:.2f}, no viewer {alone:.2f}, ratio {watched / alone:.3f}"
    )
    rows = [
        {
            "figure": f"style transfer it/s ({args.size} px) with the page open in Chromium vs no viewer",
            "convlens": watched,
            "reference": alone,
            "ratio": watched / alone,
        }
    ]
    write_json(args.json, rows, {"runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
