"""Per-viewer backpressure in the frame relay: one frame in flight, newest kept, nobody waits."""

from __future__ import annotations

import numpy as np

from convlens.encode import EncodedFrame
from convlens.streaming import ACK_TIMEOUT_S, FrameRelay


def frame(seq: int) -> EncodedFrame:
    return EncodedFrame(seq, seq, "main", np.full((8, 8, 3), seq, dtype=np.uint8))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_relay():
    sent: list[tuple[str, int]] = []
    clock = Clock()
    relay = FrameRelay(lambda sid, message: sent.append((sid, message["seq"])), clock=clock)
    return relay, sent, clock


def test_a_viewer_that_does_not_ack_gets_only_the_newest_frame_next():
    relay, sent, _ = make_relay()
    relay.subscribe("job", "slow")
    for seq in range(10):
        relay.publish("job", frame(seq))
    assert sent == [("slow", 0)]
    relay.ack("job", "slow", 0)
    assert sent == [("slow", 0), ("slow", 9)]
    assert relay.stats("job")["slow"] == {"sent": 2, "skipped": 8}


def test_a_fast_viewer_is_not_held_back_by_a_slow_one():
    relay, sent, _ = make_relay()
    relay.subscribe("job", "fast")
    relay.subscribe("job", "slow")
    for seq in range(5):
        relay.publish("job", frame(seq))
        relay.ack("job", "fast", seq)
    assert [seq for sid, seq in sent if sid == "fast"] == [0, 1, 2, 3, 4]
    assert [seq for sid, seq in sent if sid == "slow"] == [0]


def test_a_stale_ack_does_not_release_the_viewer():
    relay, sent, _ = make_relay()
    relay.subscribe("job", "v")
    relay.publish("job", frame(0))
    relay.publish("job", frame(1))
    relay.ack("job", "v", 7)
    assert sent == [("v", 0)]


def test_a_lost_ack_does_not_freeze_a_viewer_forever():
    relay, sent, clock = make_relay()
    relay.subscribe("job", "v")
    relay.publish("job", frame(0))
    clock.now += ACK_TIMEOUT_S + 1
    relay.publish("job", frame(1))
    assert sent == [("v", 0), ("v", 1)]


def test_subscribing_sends_the_latest_frame_and_disconnect_forgets_the_viewer():
    relay, sent, _ = make_relay()
    relay.subscribe("job", "late", latest=lambda: [frame(41)])
    assert sent == [("late", 41)]
    relay.drop("late")
    relay.publish("job", frame(42))
    assert sent == [("late", 41)]


def test_a_frame_kept_for_a_busy_viewer_is_encoded_by_the_publisher_not_by_the_ack():
    relay, sent, _ = make_relay()
    relay.subscribe("job", "busy")
    relay.publish("job", frame(0))
    waiting = frame(1)
    relay.publish("job", waiting)
    assert sent == [("busy", 0)] and "jpeg" in waiting._encoded
    relay.ack("job", "busy", 0)
    assert sent == [("busy", 0), ("busy", 1)]


def test_a_late_viewer_gets_every_label_at_once_and_a_frame_published_meanwhile_after_them():
    relay, sent, _ = make_relay()
    latest = [labelled(3, "a"), labelled(5, "b"), labelled(6, "c")]

    def read_latest():
        relay.publish("job", labelled(7, "a"))  # the job publishes while the viewer is being added
        return latest

    told: list[int] = []
    relay.subscribe("job", "late", latest=read_latest, after=lambda frame: told.append(frame.seq))
    assert sent == [("late", 3), ("late", 5), ("late", 6)] and told == [3, 5, 6]
    relay.ack("job", "late", 3)
    relay.ack("job", "late", 5)
    assert sent == [("late", 3), ("late", 5), ("late", 6)], "the new frame waits for the last of them"
    relay.ack("job", "late", 6)
    assert sent[-1] == ("late", 7), "and is not drawn over by an older frame of its label"


def labelled(seq: int, label: str) -> EncodedFrame:
    return EncodedFrame(seq, seq, label, np.full((8, 8, 3), seq, dtype=np.uint8))
