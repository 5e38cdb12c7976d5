"""Frames a second and bytes a second that ``convlens.client`` receives from a running job, against the convlens
page in headless Chromium watching the same job (issue 24: at least 0.9× the page).

One server, one long ``class_model`` job (224 px, a frame every step, JPEG: the page's format). Windows of
``--window`` seconds alternate between the two viewers, each freshly subscribed: *client* iterates
``Client.job(id).events(format="jpeg")`` (each frame decoded to a numpy array, as a script gets it, then
acknowledged); *page* is ``/#job=<id>`` in Chromium (it decodes and draws each frame, then acknowledges it), its
frames counted on its websocket. Medians of the windows; the job is stopped at the end.
Run: ``.venv/bin/python bench/client_frames.py [--repeats 3] [--window 8]``.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

from live import convlens_server, ensure_models, exit_on_sigterm, http, machine_note, median, stream_note
from live import write_summary as write_json

from convlens import client as convlens_client
from convlens.testing import CHROMIUM_ARGS, find_chromium

JOB = {"method": "class_model", "image": "chelsea", "params": {"steps": 2000, "every": 1}}


def client_window(url: str, job_id: str, window: float) -> tuple[float, float]:
    """Frames/s and bytes/s a client's event loop gets in ``window`` seconds."""
    sizes: list[int] = []
    decode = convlens_client.decode_image

    def counted(data: bytes):
        sizes.append(len(data))
        return decode(data)

    convlens_client.decode_image = counted
    try:
        events = convlens_client.Client(url).job(job_id).events(format="jpeg")
        first = None
        for event in events:
            if isinstance(event, convlens_client.Frame):
                if first is None:  # the catch-up frame came at once: count from it
                    first, sizes[:] = time.monotonic(), []
                elif time.monotonic() - first >= window:
                    break
        events.close()
    finally:
        convlens_client.decode_image = decode
    elapsed = time.monotonic() - first
    return len(sizes) / elapsed, sum(sizes) / elapsed


def page_window(page, url: str, job_id: str, window: float) -> tuple[float, float]:
    """Frames/s and bytes/s the page gets in ``window`` seconds (frame events and their binary attachments)."""
    frames: list[float] = []
    sizes: list[int] = []
    lock = threading.Lock()
    expecting = [0]

    def on_frame(payload) -> None:
        with lock:
            if isinstance(payload, str) and payload.startswith("451-") and '"frame"' in payload[:20]:
                frames.append(time.monotonic())
                expecting[0] = 1
            elif isinstance(payload, bytes) and expecting[0]:
                sizes.append(len(payload))
                expecting[0] = 0

    page.on("websocket", lambda socket: socket.on("framereceived", on_frame))
    page.goto(f"{url}/#job={job_id}")
    deadline = time.monotonic() + 120
    while not frames:
        if time.monotonic() > deadline:
            raise RuntimeError("the page got no frame")
        page.wait_for_timeout(20)
    with lock:
        began, frames[:], sizes[:] = time.monotonic(), [], []
    page.wait_for_timeout(window * 1000)
    with lock:
        elapsed = time.monotonic() - began
        got, size = len(frames), sum(sizes)
    page.goto("about:blank")
    return got / elapsed, size / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--window", type=float, default=8.0)
    parser.add_argument("--json", default=None, help="write the summary rows here (for bench/run.py)")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    from playwright.sync_api import sync_playwright

    print(f"client_frames: class_model 224 px, a frame a step; {machine_note()}; {stream_note()}", flush=True)
    runs: dict[str, list[tuple[float, float]]] = {"client": [], "page": []}
    with convlens_server(ensure_models()) as server, sync_playwright() as playwright:
        lens = convlens_client.Client(server.url)
        job = lens.run(JOB["method"], image=JOB["image"], params=JOB["params"], seed=0)
        browser = playwright.chromium.launch(executable_path=find_chromium(), args=list(CHROMIUM_ARGS))
        try:
            for repeat in range(args.repeats):
                order = ("client", "page") if repeat % 2 == 0 else ("page", "client")
                for side in order:
                    if side == "client":
                        measured = client_window(server.url, job.id, args.window)
                    else:
                        page = browser.new_page(viewport={"width": 1400, "height": 1000})
                        measured = page_window(page, server.url, job.id, args.window)
                        page.close()
                    runs[side].append(measured)
                    print(
                        f"  {repeat + 1} {side:<6} {measured[0]:.2f} frames/s {measured[1] / 1e3:.1f} kB/s",
                        flush=True,
                    )
        finally:
            browser.close()
            http().post(f"{server.url}/api/jobs/{job.id}/stop", timeout=30)
    fps = {side: median([r[0] for r in values]) for side, values in runs.items()}
    bps = {side: median([r[1] for r in values]) for side, values in runs.items()}
    print(
        f"\nmedians: client {fps['client']:.2f} frames/s {bps['client'] / 1e3:.1f} kB/s; "
        f"page {fps['page']:.2f} frames/s {bps['page'] / 1e3:.1f} kB/s; "
        f"ratio frames {fps['client'] / fps['page']:.3f}, bytes {bps['client'] / bps['page']:.3f}"
    )
    rows = [
        {"figure": "frames/s received, convlens.client vs the page", "convlens": fps["client"],
         "reference": fps["page"], "ratio": fps["client"] / fps["page"]},
        {"figure": "bytes/s received, convlens.client vs the page", "convlens": bps["client"],
         "reference": bps["page"], "ratio": bps["client"] / bps["page"]},
    ]  # fmt: skip
    write_json(args.json, rows, {"runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
