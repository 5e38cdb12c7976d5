"""Every Socket.IO handler of a real server answers any payload with an acknowledgement, and the server stays up.

Hypothesis sends each client event any JSON-like value (None, numbers, strings, bytes, lists, nested objects,
objects with a job id of any type, with a real job's id beside any ``format`` or ``seq``), several arguments or
none; each call must come back as ``{ok: true, ...}`` or ``{ok: false, error, field}``. Integers stay under
100 characters: Socket.IO's own decoder refuses longer ones before any handler sees the packet.
"""

from __future__ import annotations

import requests
import socketio
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from convlens.models.default import DEFAULT_MODEL_ID

EVENTS = ("subscribe", "unsubscribe", "frame_ack", "stop", "pause", "resume")
ACK_TIMEOUT_S = 30

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**80), max_value=10**80)
    | st.floats()
    | st.text(max_size=300)
)


def nested(scalars: st.SearchStrategy) -> st.SearchStrategy:
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
        ),
        max_leaves=12,
    )


values = nested(json_scalars | st.binary(max_size=64))
json_values = nested(json_scalars)
"""What a connection's ``auth`` may be: a CONNECT packet carries no binary."""
huge_strings = st.integers(min_value=1_000, max_value=200_000).map(lambda n: "j" * n)


def job_payloads(job_id: str):
    """Objects shaped like the handlers' payloads: a ``job`` of any type, or the real job's id with any extras."""
    any_job = st.fixed_dictionaries({"job": values | huge_strings})
    real_job = st.fixed_dictionaries(
        {"job": st.just(job_id)}, optional={"format": values, "seq": values, "extra": values}
    )
    return any_job | real_job


def is_acknowledgement(answer) -> bool:
    if not isinstance(answer, dict) or not isinstance(answer.get("ok"), bool):
        return False
    if answer["ok"]:
        return True
    return isinstance(answer.get("error"), str) and (
        answer.get("field") is None or isinstance(answer["field"], str)
    )


def start_a_job(url: str) -> str:
    answer = requests.post(
        f"{url}/api/jobs",
        json={"method": "saliency", "model": DEFAULT_MODEL_ID, "image": "chelsea"},
        timeout=60,
    )
    assert answer.status_code == 202, answer.text
    return answer.json()["id"]


def test_every_handler_acknowledges_any_payload_and_the_server_stays_up(live_server):
    job_id = start_a_job(live_server)
    client = socketio.Client()
    client.connect(live_server, transports=["websocket"])
    payload = (
        values.map(lambda value: ("one", value))
        | job_payloads(job_id).map(lambda value: ("one", value))
        | st.lists(values, max_size=3).map(lambda many: ("many", tuple(many)))
    )

    @settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(event=st.sampled_from(EVENTS), sent=payload)
    def every_call_is_answered(event: str, sent: tuple[str, object]) -> None:
        how, data = sent
        # python-socketio sends a tuple as that many arguments, and no data as none.
        arguments = data if how == "many" else (data,)
        answer = client.call(event, arguments if arguments else None, timeout=ACK_TIMEOUT_S)
        assert is_acknowledgement(answer), (event, arguments, answer)

    try:
        every_call_is_answered()
    finally:
        client.disconnect()
    assert requests.get(f"{live_server}/api/models", timeout=30).ok
    again = socketio.Client()
    again.connect(live_server, transports=["websocket"])
    try:
        assert again.call("subscribe", {"job": job_id}, timeout=ACK_TIMEOUT_S)["ok"]
    finally:
        again.disconnect()


@settings(
    max_examples=15,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
@given(auth=json_values)
def test_a_connection_with_any_auth_payload_is_answered_and_the_server_stays_up(live_server, auth):
    client = socketio.Client()
    try:
        client.connect(live_server, transports=["websocket"], auth=auth, wait_timeout=30)
        assert client.call("subscribe", {"job": "nope"}, timeout=ACK_TIMEOUT_S)["field"] == "job"
    except socketio.exceptions.ConnectionError as refused:
        assert "token" in str(refused)  # only a server that needs a token refuses, and says why
    finally:
        client.disconnect()
    assert requests.get(f"{live_server}/api/models", timeout=30).ok
