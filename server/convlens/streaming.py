"""Per-viewer frame delivery with backpressure.

Socket.IO's ``emit`` never blocks, so a job that sends every frame to a slow
viewer builds an unbounded queue. Here each viewer has at most one frame in
flight: it is sent the next one only after it acknowledges drawing the last
(``frame_ack``), and meanwhile only the newest waiting frame is kept. A slow
viewer gets fewer, newer frames; the job never waits for anyone. A viewer who
subscribes late is first sent the newest frame of each label at once (a bounded
catch-up, ``Job.latest_frames``); its next frame waits for the last of those.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .encode import EncodedFrame

SendFrame = Callable[[str, dict], None]
"""``send(viewer_sid, frame_message)`` emits one ``frame`` event to one viewer."""

STREAM_HZ = 10.0
"""How often a running job sends its newest frame, progress and metrics to its viewers, at most.

Steps can be much faster than that (70 it/s for a 128-px style transfer on 2 cores), and every message costs
the job time: on a machine whose cores all run the job's torch threads, each one a viewer's socket handles
takes a core from them. Between sends, metrics points are collected (a send carries all of them, nothing is
lost) and only the newest frame and progress are kept; the run's GIF keeps its frames apart from this. Watched
by one viewer on the same 2 cores, a 128-px style transfer lost 3% of its step rate at 10 sends a second and
7% at 20 (``bench/streaming_cost.py``), so 10 it is; the page's chart redraws 10 times a second and its frames
are drawn as they come (``<convlens-job-view max-fps>``, 20 by default, caps them). ``CONVLENS_STREAM_HZ``
sets it, e.g. 20 or 30 where the server has cores to spare."""

STREAM_BUDGET = 0.01
"""The share of a running job's time that its sends may take on its own thread, at most.

A send makes the newest frame's pixels and JPEG and emits it with progress and metrics, between two steps, when
the step has left the caches cold: 1.5 ms a send for DeepDream's 448x298 frames on 2 cores (pixels 0.4 ms, JPEG
0.9 ms, about twice their time in a loop of their own), 1 ms for a 224-px class model's, 0.9 ms for a 128-px
style transfer's; the largest cost of being watched (``bench/README.md``). A job whose sends would take more
than this share sends less often than ``STREAM_HZ`` (that DeepDream about 6 times a second, where it went 8
times). ``CONVLENS_STREAM_BUDGET`` sets it; 0: no budget, ``STREAM_HZ`` alone paces the sends."""

SLOWEST_SEND_S = 0.5
"""However much a send costs, a running job sends at least this often (2 a second)."""

ACK_TIMEOUT_S = 10.0
"""A viewer that never acknowledges still gets a frame this often, so a lost ack cannot freeze it."""


_CATCHING_UP = -1
"""A viewer's frame in flight while it is being added: what the job publishes meanwhile waits."""


@dataclass
class _Viewer:
    fmt: str
    in_flight_seq: int | None = None
    sent_at: float = 0.0
    waiting: EncodedFrame | None = None
    sent: int = 0
    skipped: int = 0


class FrameRelay:
    def __init__(self, send: SendFrame, clock: Callable[[], float] = time.monotonic) -> None:
        self._send = send
        self._clock = clock
        self._lock = threading.Lock()
        self._viewers: dict[str, dict[str, _Viewer]] = {}

    def subscribe(
        self,
        job_id: str,
        sid: str,
        fmt: str = "jpeg",
        latest: Callable[[], Iterable[EncodedFrame]] = tuple,
        after: Callable[[EncodedFrame], None] | None = None,
    ) -> None:
        """Add a viewer and send it the frames ``latest()`` gives (the newest of each label), in order, each
        followed by ``after(frame)``; the job's next frame waits for the viewer's ack of the last of them.

        ``latest`` is read once the viewer is added: a frame published before is among them, one published
        since waits for them (and is not drawn over by an older frame of its label).
        """
        with self._lock:
            viewer = self._viewers.setdefault(job_id, {}).setdefault(sid, _Viewer(fmt))
            viewer.fmt = fmt
            viewer.in_flight_seq = _CATCHING_UP
            viewer.sent_at = self._clock()
        frames = list(latest())
        with self._lock:
            viewer.in_flight_seq = frames[-1].seq if frames else None
            viewer.sent += len(frames)
            waiting = None if frames else viewer.waiting
            if waiting is not None:
                viewer.waiting = None
        for frame in frames:
            self._send(sid, frame.message(job_id, fmt))
            if after is not None:
                after(frame)
        if waiting is not None:
            self.publish(job_id, waiting, only=sid)

    def unsubscribe(self, job_id: str, sid: str) -> None:
        with self._lock:
            self._viewers.get(job_id, {}).pop(sid, None)

    def drop(self, sid: str) -> None:
        """Forget a disconnected viewer everywhere."""
        with self._lock:
            for viewers in self._viewers.values():
                viewers.pop(sid, None)

    def forget_job(self, job_id: str) -> None:
        with self._lock:
            self._viewers.pop(job_id, None)

    def publish(self, job_id: str, frame: EncodedFrame, only: str | None = None) -> None:
        """Send ``frame`` to each viewer with none in flight; keep it for the others' next ack.

        The frame is encoded here, on the publishing thread (the job's), also for the viewers that get it
        later: an ack's thread then only sends it. Work on another thread takes a core from the job's torch
        threads on a machine they keep busy, and the job's thread makes pixels fastest (with torch).
        """
        to_send: list[tuple[str, str]] = []
        waiting_formats: set[str] = set()
        now = self._clock()
        with self._lock:
            for sid, viewer in self._viewers.get(job_id, {}).items():
                if only is not None and sid != only:
                    continue
                if viewer.in_flight_seq is None or now - viewer.sent_at > ACK_TIMEOUT_S:
                    viewer.in_flight_seq = frame.seq
                    viewer.sent_at = now
                    viewer.sent += 1
                    to_send.append((sid, viewer.fmt))
                else:
                    if viewer.waiting is not None:
                        viewer.skipped += 1
                    viewer.waiting = frame
                    waiting_formats.add(viewer.fmt)
        for sid, fmt in to_send:
            self._send(sid, frame.message(job_id, fmt))
        for fmt in waiting_formats:
            frame.data(fmt)

    def ack(self, job_id: str, sid: str, seq: int) -> None:
        with self._lock:
            viewer = self._viewers.get(job_id, {}).get(sid)
            if viewer is None or viewer.in_flight_seq != seq:
                return
            viewer.in_flight_seq = None
            frame, viewer.waiting = viewer.waiting, None
        if frame is not None:
            self.publish(job_id, frame, only=sid)

    def stats(self, job_id: str) -> dict[str, dict[str, int]]:
        with self._lock:
            return {
                sid: {"sent": v.sent, "skipped": v.skipped}
                for sid, v in self._viewers.get(job_id, {}).items()
            }
