"""Frames per second a convlens job produces and a Socket.IO viewer on 127.0.0.1 receives, against raw Socket.IO.

convlens side: a real ``python -m convlens serve``; a small picture (chelsea scaled to 64x96, uploaded) so that
DeepDream on the first block (``_blocks.0``) makes frames as fast as the machine allows; one viewer per job
over a websocket, acknowledging each frame (``frame_ack``) at once (fast) or after 50 ms (slow). *Produced*
is the job's rate, from the ``progress`` events (they are not held back by backpressure); *received* the
frames that reached the viewer per second.

Reference side: a minimal Flask-SocketIO app (threading mode, as convlens) in a subprocess of this script
that sends the same number of frame messages of the median convlens JPEG size to one client, the next one
when the previous is acknowledged: the most frames per second Socket.IO itself delivers with the same
one-in-flight protocol, without convlens's job, encoder and relay.

Both servers run with TCP_NODELAY on their sockets (``convlens serve`` sets it): a binary Socket.IO event is
two websocket messages, and with Nagle's algorithm the second waits for the client's delayed TCP
acknowledgement (40 ms on Linux), which capped a fast viewer near 20 frames/s before convlens set it.

All servers and viewers alternate within one run; medians are reported.
Run: ``.venv/bin/python bench/stream_fps.py [--frames 100 --repeats 3]``.
"""

from __future__ import annotations

import argparse
import io
import sys
from contextlib import ExitStack

import numpy as np
from live import (
    LOCAL,
    JobRecord,
    Viewer,
    convlens_server,
    ensure_models,
    exit_on_sigterm,
    free_port,
    http,
    machine_note,
    median,
    rate,
    server_process,
    submit,
    write_summary,
)
from PIL import Image

MODEL = "efficientnet_lite0.onnx"
LAYER = "_blocks.0"
IMAGE_SIZE = (64, 96)
SLOW_ACK_S = 0.05


# -- the reference server --------------------------------------------------------------------------------
def serve_raw(port: int, nodelay: bool) -> None:
    """A Flask-SocketIO app that streams ``n`` frames of ``size`` bytes to a subscriber, one per acknowledgement."""
    import os
    import threading

    import werkzeug.serving
    from flask import Flask, request
    from flask_socketio import SocketIO

    werkzeug.serving.WSGIRequestHandler.disable_nagle_algorithm = nodelay

    app = Flask(__name__)
    socketio = SocketIO(app, async_mode="threading")
    streams: dict[str, dict] = {}
    lock = threading.Lock()

    @app.get("/ready")
    def ready():
        return "ok"

    def send(sid: str, stream: dict) -> None:
        seq = stream["next"]
        stream["next"] += 1
        message = {
            "job": stream["job"],
            "seq": seq,
            "step": seq + 1,
            "label": "dream",
            "mime": "image/jpeg",
            "width": IMAGE_SIZE[1],
            "height": IMAGE_SIZE[0],
            "data": stream["payload"],
        }
        socketio.emit("frame", message, to=sid)

    @socketio.on("subscribe")
    def subscribe(data):
        stream = {
            "job": data["job"],
            "n": int(data["n"]),
            "payload": os.urandom(int(data["size"])),
            "next": 0,
        }
        with lock:
            streams[request.sid] = stream
        send(request.sid, stream)
        return {"ok": True, "job": {"id": data["job"]}}

    @socketio.on("frame_ack")
    def frame_ack(data):
        sid = request.sid
        with lock:
            stream = streams.get(sid)
            if stream is None or data.get("seq") != stream["next"] - 1:
                return {"ok": True}
            finished = stream["next"] >= stream["n"]
        if finished:
            socketio.emit("done", {"job": stream["job"], "result": {}}, to=sid)
        else:
            send(sid, stream)
        return {"ok": True}

    @socketio.on("unsubscribe")
    def unsubscribe(_data):
        with lock:
            streams.pop(request.sid, None)
        return {"ok": True}

    socketio.run(app, host=LOCAL, port=port, use_reloader=False, allow_unsafe_werkzeug=True, log_output=False)


class RawViewer(Viewer):
    """The same viewer; subscribing tells the raw server how many frames of what size to send."""

    def start(self, job_id: str, frames: int, size: int) -> JobRecord:
        self.record = JobRecord(job_id)
        answer = self.client.call("subscribe", {"job": job_id, "n": frames, "size": size}, timeout=30)
        if not answer or not answer.get("ok"):
            raise RuntimeError(f"raw subscribe refused: {answer}")
        return self.record


def received_fps(frames: list[tuple[float, int, int]]) -> float:
    if len(frames) < 2:
        return float("nan")
    return rate(len(frames) - 1, frames[-1][0] - frames[0][0])


# -- the convlens side -----------------------------------------------------------------------------------
def upload_small_image(url: str) -> str:
    from skimage import data

    picture = Image.fromarray(np.asarray(data.chelsea())).resize(IMAGE_SIZE[::-1], Image.BICUBIC)
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    answer = http().post(
        f"{url}/api/images", files={"file": ("small.png", buffer.getvalue(), "image/png")}, timeout=60
    )
    answer.raise_for_status()
    return answer.json()["id"]


def convlens_stream(url: str, viewer: Viewer, image_id: str, frames: int, timeout: float) -> dict:
    job_id = submit(
        url,
        {
            "method": "deepdream",
            "model": MODEL,
            "image": image_id,
            "params": {"layer": LAYER, "octaves": 1, "steps": frames},
            "seed": 0,
        },
    )
    viewer.watch(job_id)
    record = viewer.wait(timeout)
    (first_time, first_step), (last_time, last_step) = record.progress[0], record.progress[-1]
    return {
        "produced_fps": rate(last_step - first_step, last_time - first_time),
        "received_fps": received_fps(record.frames),
        "frames_received": len(record.frames),
        "frames_produced": record.job.get("frames", frames),
        "median_bytes": median([size for _, _, size in record.frames]),
    }


def raw_stream(viewer: RawViewer, frames: int, size: int, timeout: float, name: str) -> dict:
    viewer.start(name, frames, size)
    record = viewer.wait(timeout)
    return {"received_fps": received_fps(record.frames), "frames_received": len(record.frames)}


# -- the run ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100, help="frames per job (DeepDream steps)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--job-timeout", type=float, default=300)
    parser.add_argument("--json", default=None, help="write the summary rows here (for bench/run.py)")
    parser.add_argument("--raw-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--nodelay", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.raw_server:
        serve_raw(args.port, args.nodelay)
        return 0
    exit_on_sigterm()

    models_dir = ensure_models()
    print(
        f"stream_fps: {args.frames} frames of {IMAGE_SIZE[1]}x{IMAGE_SIZE[0]} px per run; {machine_note()}",
        flush=True,
    )
    results: dict[str, list[dict]] = {}
    with ExitStack() as servers:
        urls = {}
        # convlens serve sets TCP_NODELAY on its sockets; the raw reference gets the same.
        urls["convlens"] = servers.enter_context(convlens_server(models_dir)).url
        port = free_port()
        command = [sys.executable, __file__, "--raw-server", "--port", str(port), "--nodelay"]
        urls["raw"] = servers.enter_context(server_process(command, port, "/ready")).url
        viewers: dict[str, Viewer] = {}
        for server_name, url in urls.items():
            kind = RawViewer if server_name.startswith("raw") else Viewer
            for speed, delay in (("fast", 0.0), ("slow", SLOW_ACK_S)):
                viewers[f"{server_name} {speed}"] = kind(url, delay)
        servers.callback(lambda: [viewer.close() for viewer in viewers.values()])
        image_ids = {
            name: upload_small_image(url) for name, url in urls.items() if name.startswith("convlens")
        }
        size = 0
        for name in image_ids:
            warm = convlens_stream(urls[name], viewers[f"{name} fast"], image_ids[name], 10, args.job_timeout)
            size = int(warm["median_bytes"])
        raw_stream(viewers["raw fast"], 10, size, args.job_timeout, "warm-up")
        sides = list(viewers)
        for repeat in range(args.repeats):
            order = sides if repeat % 2 == 0 else sides[::-1]
            for side in order:
                viewer = viewers[side]
                server_name = side.rsplit(" ", 1)[0]
                if side.startswith("convlens"):
                    run = convlens_stream(
                        urls[server_name], viewer, image_ids[server_name], args.frames, args.job_timeout
                    )
                    size = int(run["median_bytes"])
                else:
                    run = raw_stream(viewer, args.frames, size, args.job_timeout, f"raw-{repeat}")
                results.setdefault(side, []).append(run)
                produced = f"produced {run['produced_fps']:.1f} fps, " if "produced_fps" in run else ""
                print(
                    f"  repeat {repeat + 1} {side:<22} {produced}received {run['received_fps']:.1f} fps"
                    f" ({run['frames_received']} frames)",
                    flush=True,
                )

    rows, details = report(results, size)
    write_summary(args.json, rows, details)
    return 0


def report(results: dict[str, list[dict]], size: int) -> tuple[list[dict], dict]:
    def med(side: str, key: str) -> float:
        return median([run[key] for run in results.get(side, []) if key in run])

    details: dict = {side: {"runs": runs} for side, runs in results.items()}
    rows = []
    print(f"\nFrames per second, medians (frame payload {size} bytes)")
    print(
        f"{'server':<9} {'viewer':<6} {'produced':>9} {'received':>9} {'recv/prod':>9} {'raw':>8} {'convlens/raw':>12}"
    )
    for suffix, label in (("", "shipped"),):
        for speed in ("fast", "slow"):
            side = f"convlens{suffix} {speed}"
            produced, received = med(side, "produced_fps"), med(side, "received_fps")
            raw = med(f"raw{suffix} {speed}", "received_fps")
            print(
                f"{label:<9} {speed:<6} {produced:>9.1f} {received:>9.1f} {received / produced:>9.3f}"
                f" {raw:>8.1f} {received / raw:>12.3f}"
            )
            details[side + " summary"] = {
                "produced_fps": produced,
                "received_fps": received,
                "raw_fps": raw,
                "payload_bytes": size,
            }
            ack = "at once" if speed == "fast" else f"after {SLOW_ACK_S * 1000:.0f} ms"
            tcp = ", TCP_NODELAY on both servers"
            rows.append(
                {
                    "figure": f"stream fps, viewer acking {ack}{tcp}: received vs produced by the job",
                    "convlens": received,
                    "reference": produced,
                    "ratio": received / produced,
                }
            )
            rows.append(
                {
                    "figure": f"stream fps, viewer acking {ack}{tcp}: convlens vs raw Flask-SocketIO",
                    "convlens": received,
                    "reference": raw,
                    "ratio": received / raw,
                }
            )
    return rows, details


if __name__ == "__main__":
    sys.exit(main())
