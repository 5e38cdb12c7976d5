"""Access (README, "Access: tokens, origins, ownership"): the token on REST and Socket.IO of a real server, a page
of another origin refused for state changes and let read as configured, the headers every answer carries, and
``convlens serve`` refusing an address other machines reach without a token."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import socketio

from convlens import hookimpl
from convlens.app import create_app
from convlens.auth import access_at_start, is_loopback
from convlens.config import Config
from convlens.errors import BadInput
from convlens.events import Progress, Result
from convlens.methods import Method
from convlens.models.default import DEFAULT_MODEL_ID
from convlens.params import Param
from convlens.plugins import make_plugin_manager
from local import REPO, free_port, start_serve

TOKEN = "open-sesame-1234"
ELSEWHERE = "https://pages.example"
FRIEND = "https://friend.example"
OWN = "http://localhost"
"""The origin of Flask's test client's requests (``Host: localhost``), the server's own."""
HANG_S = 120
GATES: dict[str, threading.Event] = {}


def run_held(ctx):
    """Runs until the test opens its gate: a job that is surely running while the test pokes at it."""
    gate = GATES[ctx.params["gate"]]
    yield Progress(1, 2)
    assert gate.wait(HANG_S), "hung: the test never let the held job go"
    yield Progress(2, 2)
    yield Result(data={})


class HeldMethods:
    @hookimpl
    def register_methods(self):
        return [
            Method(
                name="held", title="Held", topic="tests", run=run_held, params=(Param("gate", "string", ""),)
            )
        ]


@pytest.fixture(autouse=True)
def release_held_jobs():
    """Lets every held job end after its test, passed or failed."""
    yield
    for gate in GATES.values():
        gate.set()


@pytest.fixture
def make_client(models_dir, tmp_path, monkeypatch):
    """``make_client(**config)``: a test client of a new app with ``held`` beside the built-in methods."""
    import convlens.app

    def plugins():
        pm = make_plugin_manager({"basics"})
        pm.register(HeldMethods(), name="auth_tests")
        return pm

    monkeypatch.setattr(convlens.app, "get_plugin_manager", plugins)

    def make(**settings):
        config = Config(
            models_dirs=[models_dir], data_dir=tmp_path / "data", ensure_default_model=False, **settings
        )
        return create_app(config).test_client()

    return make


def start_held(client) -> tuple[str, threading.Event]:
    gate = threading.Event()
    GATES[str(id(gate))] = gate
    answer = client.post(
        "/api/jobs",
        json={
            "method": "held",
            "model": DEFAULT_MODEL_ID,
            "image": "chelsea",
            "params": {"gate": str(id(gate))},
        },
    )
    assert answer.status_code == 202, answer.get_json()
    job_id = answer.get_json()["id"]
    deadline = time.monotonic() + HANG_S
    while client.get(f"/api/jobs/{job_id}").get_json()["state"] != "running":
        assert time.monotonic() < deadline, "hung: the held job never started"
        time.sleep(0.02)
    return job_id, gate


def state_of(client, job_id: str) -> str:
    return client.get(f"/api/jobs/{job_id}").get_json()["state"]


def png_file() -> tuple:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (20, 10), (200, 30, 40)).save(buffer, "PNG")
    return (io.BytesIO(buffer.getvalue()), "red.png")


# -- origins ---------------------------------------------------------------------------------------------


def test_a_page_of_another_origin_may_not_start_stop_upload_or_delete(make_client):
    client = make_client()  # the default: CONVLENS_CORS_ORIGINS=*
    job_id, _ = start_held(client)
    jobs_before = client.get("/api/jobs").get_json()
    foreign = {"Origin": ELSEWHERE}
    refusals = [
        client.post(
            "/api/jobs",
            json={"method": "predict", "model": DEFAULT_MODEL_ID, "image": "chelsea"},
            headers=foreign,
        ),
        client.post(f"/api/jobs/{job_id}/stop", headers=foreign),
        client.post(f"/api/jobs/{job_id}/pause", headers=foreign),
        client.post("/api/images", data={"file": png_file()}, headers=foreign),
        client.delete("/api/images/upload-0123456789abcdef", headers=foreign),
    ]
    for answer in refusals:
        assert answer.status_code == 403, answer.get_json()
        assert answer.get_json()["field"] == "Origin"
        assert (
            ELSEWHERE in answer.get_json()["error"] and "CONVLENS_CORS_ORIGINS" in answer.get_json()["error"]
        )
    assert state_of(client, job_id) == "running", "the foreign stop and pause changed nothing"
    assert client.get("/api/jobs").get_json() == jobs_before, "no job was started"
    assert [i for i in client.get("/api/images").get_json() if i["source"] == "upload"] == []
    uploads = client.application.extensions["convlens"].config.uploads_dir
    assert not uploads.exists() or not list(uploads.glob("upload-*")), "no upload was kept"
    # The page's own origin, and a script (no Origin at all), may.
    assert client.post(f"/api/jobs/{job_id}/pause", headers={"Origin": OWN}).get_json()["state"] == "paused"
    assert client.post(f"/api/jobs/{job_id}/stop").status_code == 200


def test_a_configured_origin_may_change_state_and_read(make_client):
    client = make_client(cors_origins=[FRIEND])
    answer = client.post(
        "/api/jobs",
        json={"method": "predict", "model": DEFAULT_MODEL_ID, "image": "chelsea"},
        headers={"Origin": FRIEND},
    )
    assert answer.status_code == 202, answer.get_json()
    assert answer.headers["Access-Control-Allow-Origin"] == FRIEND
    upload = client.post("/api/images", data={"file": png_file()}, headers={"Origin": FRIEND})
    assert upload.status_code == 201
    preflight = client.options(
        "/api/images/x", headers={"Origin": FRIEND, "Access-Control-Request-Method": "DELETE"}
    )
    assert preflight.headers["Access-Control-Allow-Origin"] == FRIEND
    assert "DELETE" in preflight.headers["Access-Control-Allow-Methods"]
    assert "authorization" in preflight.headers["Access-Control-Allow-Headers"].lower()
    assert (
        "Access-Control-Allow-Origin" not in client.get("/api/models", headers={"Origin": ELSEWHERE}).headers
    )
    assert client.post("/api/jobs", json={}, headers={"Origin": ELSEWHERE}).status_code == 403


def test_with_star_any_page_may_read_but_its_state_changing_preflight_is_refused(make_client):
    client = make_client(cors_origins=["*"])
    assert (
        client.get("/api/models", headers={"Origin": ELSEWHERE}).headers["Access-Control-Allow-Origin"] == "*"
    )
    for method in ("POST", "DELETE"):
        preflight = client.options(
            "/api/jobs", headers={"Origin": ELSEWHERE, "Access-Control-Request-Method": method}
        )
        assert "Access-Control-Allow-Origin" not in preflight.headers, method
    reading = client.options(
        "/api/jobs", headers={"Origin": ELSEWHERE, "Access-Control-Request-Method": "GET"}
    )
    assert reading.headers["Access-Control-Allow-Origin"] == "*"


def test_every_answer_says_nosniff_and_which_pages_may_frame_it(make_client):
    for origins, ancestors in (
        (["*"], "frame-ancestors *"),
        ([FRIEND], f"frame-ancestors 'self' {FRIEND}"),
    ):
        client = make_client(cors_origins=origins)
        for path in ("/", "/embed.html", "/api/models", "/api/nothing-here", "/api/images/nope"):
            answer = client.get(path)
            assert answer.headers["X-Content-Type-Options"] == "nosniff", path
            assert answer.headers["Content-Security-Policy"] == ancestors, path
            assert "X-Frame-Options" not in answer.headers, "it would forbid the documented iframe"


def test_the_page_gives_each_browser_its_own_id_cookie(make_client):
    client = make_client()
    answer = client.get("/")
    cookie = client.get_cookie("convlens_client")
    assert cookie is not None and len(cookie.value) == 32 and int(cookie.value, 16) >= 0
    assert "SameSite=Lax" in answer.headers["Set-Cookie"]
    assert "convlens_client" not in client.get("/").headers.get("Set-Cookie", ""), "set once, then kept"
    other = make_client()
    other.get("/")
    assert other.get_cookie("convlens_client").value != cookie.value


def test_socket_controls_from_a_page_that_may_only_watch_are_refused(make_client):
    client = make_client(cors_origins=["*"])
    job_id, _ = start_held(client)
    app = client.application
    socketio_ext = app.extensions["socketio"]
    watcher = socketio_ext.test_client(app, headers={"Origin": ELSEWHERE})
    assert watcher.is_connected()
    assert watcher.emit("subscribe", {"job": job_id}, callback=True)["ok"] is True, "watching is allowed"
    for event in ("stop", "pause", "resume"):
        answer = watcher.emit(event, {"job": job_id}, callback=True)
        assert answer["ok"] is False and answer["field"] == "Origin", (event, answer)
    assert state_of(client, job_id) == "running"
    own = socketio_ext.test_client(app, headers={"Origin": OWN})
    assert own.emit("stop", {"job": job_id}, callback=True)["ok"] is True
    watcher.disconnect()
    own.disconnect()


# -- the token -------------------------------------------------------------------------------------------


def test_with_a_token_the_api_needs_it_and_the_page_stays_public(make_client):
    client = make_client(token=TOKEN)
    for headers, query in (({}, ""), ({"Authorization": "Bearer wrong"}, ""), ({}, "?token=wrong")):
        answer = client.get("/api/models" + query, headers=headers)
        assert answer.status_code == 401, (headers, query)
        assert answer.get_json()["field"] == "token"
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.post("/api/jobs", json={}).status_code == 401
    assert client.get("/").status_code == 200 and client.get("/assets/convlens.js").status_code == 200
    assert client.get("/api/models", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    # That answer set the cookie the page's <img> requests carry; the query string works too.
    assert client.get("/api/images/chelsea?size=32").status_code == 200
    fresh = make_client(token=TOKEN)
    assert fresh.get(f"/api/models?token={TOKEN}").status_code == 200


def test_without_a_token_configured_nothing_asks_for_one(make_client):
    assert make_client().get("/api/models").status_code == 200


# -- a real server with a token --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def token_server(models_dir: Path, tmp_path_factory) -> str:
    """``convlens serve`` on 127.0.0.1 with ``CONVLENS_TOKEN`` and ``FRIEND`` as its only other origin."""
    data = tmp_path_factory.mktemp("token-server")
    env = {"CONVLENS_TOKEN": TOKEN, "CONVLENS_CORS_ORIGINS": FRIEND}
    served = start_serve(models_dir, data, env, hang_s=HANG_S)
    process, url, log_path = served.process, served.url, served.log_path
    try:
        assert "needs the token" in log_path.read_text(), "the start-up says how access works"
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def test_a_real_server_asks_rest_requests_for_the_token(token_server):
    refused = requests.get(token_server + "/api/models", timeout=30)
    assert refused.status_code == 401 and refused.json()["field"] == "token"
    wrong = requests.get(token_server + "/api/models", headers={"Authorization": "Bearer nope"}, timeout=30)
    assert wrong.status_code == 401
    allowed = requests.get(
        token_server + "/api/models", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
    )
    assert allowed.status_code == 200 and any(m["id"] == DEFAULT_MODEL_ID for m in allowed.json())


@pytest.mark.parametrize(
    ("auth", "headers", "accepted"),
    [
        (None, {}, False),
        ({"token": "nope"}, {}, False),
        ({"token": TOKEN}, {}, True),
        ({"token": TOKEN}, {"Origin": ELSEWHERE}, False),
        ({"token": TOKEN}, {"Origin": FRIEND}, True),
    ],
    ids=["no token", "wrong token", "token", "token from another origin", "token from a listed origin"],
)
def test_a_real_server_asks_socket_connections_for_the_token_and_a_listed_origin(
    token_server, auth, headers, accepted
):
    client = socketio.Client(reconnection=False)
    try:
        if accepted:
            client.connect(token_server, auth=auth, headers=headers, transports=["polling"], wait_timeout=30)
            assert client.connected
        else:
            with pytest.raises(socketio.exceptions.ConnectionError):
                client.connect(
                    token_server, auth=auth, headers=headers, transports=["polling"], wait_timeout=30
                )
    finally:
        client.disconnect()


def test_the_page_asks_for_the_token_once_then_lists_the_models(token_server, browser):
    assert (REPO / "web" / "dist" / "index.html").is_file(), "run `make web` first"
    context = browser.new_context(base_url=token_server)
    page = context.new_page()
    page.set_default_timeout(60_000)
    asked = []

    def answer(dialog):
        asked.append(dialog.message)
        dialog.accept(TOKEN)

    page.on("dialog", answer)
    try:
        page.goto("/")
        select = page.get_by_test_id("model-select")
        select.locator(f'option[value="{DEFAULT_MODEL_ID}"]').wait_for(state="attached")
        assert len(asked) == 1 and "token" in asked[0], asked
        page.reload()
        select.locator(f'option[value="{DEFAULT_MODEL_ID}"]').wait_for(state="attached")
        thumb = page.get_by_test_id("image-thumb").first.locator("img")
        thumb.wait_for(state="visible")
        # Waited for, not read at once: the thumbnail loads lazily (a 401 would leave it empty: this times out).
        page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=thumb.element_handle())
        assert len(asked) == 1, "kept, not asked again"
    finally:
        context.close()


# -- start-up --------------------------------------------------------------------------------------------


def test_serving_on_a_reachable_address_without_a_token_refuses_to_start():
    env = {k: v for k, v in os.environ.items() if k not in ("CONVLENS_TOKEN", "CONVLENS_ALLOW_NO_TOKEN")}
    done = subprocess.run(
        [sys.executable, "-m", "convlens", "serve", "--host", "0.0.0.0", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_S,
    )
    assert done.returncode == 2, done.stderr
    assert "token" in done.stderr and "CONVLENS_TOKEN" in done.stderr and "--no-token" in done.stderr


def test_what_start_up_says_of_access():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("lab.example")
    assert "only this machine" in access_at_start("127.0.0.1", None, False)
    assert "needs the token" in access_at_start("0.0.0.0", TOKEN, False)
    assert "anyone" in access_at_start("0.0.0.0", None, True)
    with pytest.raises(BadInput) as refused:
        access_at_start("0.0.0.0", None, False)
    assert refused.value.field == "token"


@pytest.fixture
def serve_page():
    """``serve_page(html)``: the URL of a page served by a second real server on 127.0.0.1, another origin."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    servers = []

    def serve(html: str) -> str:
        class Page(BaseHTTPRequestHandler):
            def do_GET(self):
                body = html.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{server.server_port}/wiki.html"

    yield serve
    for server in servers:
        server.shutdown()


def test_a_view_embedded_on_another_site_watches_a_job_but_cannot_stop_it(live_server, browser, serve_page):
    """The default origins (``*``): README's ``<convlens-job-view server=…>`` on another site still reads the job
    and its stream; the page's own POST to stop a job is refused."""
    job = requests.post(
        live_server + "/api/jobs",
        json={"method": "predict", "model": DEFAULT_MODEL_ID, "image": "chelsea"},
        timeout=60,
    ).json()
    deadline = time.monotonic() + HANG_S
    while requests.get(f"{live_server}/api/jobs/{job['id']}", timeout=30).json()["state"] != "done":
        assert time.monotonic() < deadline, "hung: the job did not finish"
        time.sleep(0.2)
    html = (
        "<!doctype html><title>a lab's wiki</title>"
        f'<script type="module" src="{live_server}/assets/convlens.js"></script>'
        f'<convlens-job-view job="{job["id"]}" server="{live_server}"></convlens-job-view>'
    )
    # Another origin on this machine, a real one: Chromium lets no page from elsewhere reach a loopback server.
    wiki = serve_page(html)
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(wiki)
        state = """() => document.querySelector('convlens-job-view')?.shadowRoot
            ?.querySelector('[data-testid="state"]')?.dataset.state"""
        page.wait_for_function(f"({state})() === 'done'", timeout=60_000)
        stop = f"fetch('{live_server}/api/jobs/{job['id']}/stop', {{method: 'POST'}}).then((r) => r.status)"
        assert page.evaluate(stop) == 403
    finally:
        context.close()
