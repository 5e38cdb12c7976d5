"""``convlens.client`` against real ``convlens serve`` processes: listing, uploads, jobs watched over Socket.IO
with the page's backpressure, control, downloads, and the ways a connection goes wrong."""

from __future__ import annotations

import io
import os
import shutil
import sysconfig
import warnings
from pathlib import Path

import numpy as np
import pytest
import requests

from convlens.client import (
    Client,
    ClientError,
    Done,
    Frame,
    Progress,
    ProgressBar,
    ServerUnreachable,
    State,
    Stopped,
    VersionMismatch,
    client_version,
)
from local import free_port

TOKEN = "client-test-token"
OTHER_VERSION = "9.9.9"


@pytest.fixture(scope="module")
def lens(live_server: str) -> Client:
    return Client(live_server)


def rest(url: str) -> bytes:
    answer = requests.get(url, timeout=60)
    answer.raise_for_status()
    return answer.content


def test_lists_are_typed_and_name_the_default_model(lens):
    models = lens.models()
    assert [m.id for m in models if m.default] == [lens.default_model()]
    assert all(m.input_size and len(m.input_size) == 2 for m in models if m.error is None)
    assert {"saliency", "class_model"} <= {m.name for m in lens.methods()}
    assert "chelsea" in {i.id for i in lens.images()}
    datasets = lens.datasets()
    assert datasets and all(d.count > 0 for d in datasets)


def test_an_uploaded_array_reads_back_pixel_for_pixel(lens):
    pixels = np.random.default_rng(3).integers(0, 256, (21, 34, 3), dtype=np.uint8)
    image_id = lens.upload(pixels)
    assert image_id in {i.id for i in lens.images()}
    assert np.array_equal(lens.image(image_id), pixels)
    floats = pixels / 255.0
    assert np.array_equal(lens.image(lens.upload(floats)), pixels)


def test_an_array_that_is_not_a_picture_is_refused_naming_image(lens):
    with pytest.raises(ClientError) as refused:
        lens.upload(np.zeros((4, 4), np.uint8))
    assert refused.value.field == "image" and "H×W×3" in refused.value.reason
    with pytest.raises(ClientError, match="image"):
        lens.upload(np.full((4, 4, 3), 2.0))


def test_saliency_downloads_the_very_files_the_rest_api_serves(lens, tmp_path):
    job = lens.run("saliency", image="chelsea", seed=1)
    events = list(job.events(timeout=300))
    assert isinstance(events[-1], Done) and events[-1].result["method"] == "saliency"
    assert job.wait(timeout=60)["state"] == "done"
    result = job.result()
    written = job.download(tmp_path)
    assert {p.name for p in written} == {"result.json", *result["files"].values(), *result["arrays"].values()}
    for name, file in result["files"].items():
        assert (tmp_path / file).read_bytes() == rest(f"{lens.url}/api/jobs/{job.id}/images/{name}.png")
    arrays = job.arrays()
    assert set(arrays) == set(result["arrays"])
    for name, file in result["arrays"].items():
        served = rest(f"{lens.url}/api/jobs/{job.id}/arrays/{name}.npy")
        assert (tmp_path / file).read_bytes() == served
        assert np.array_equal(arrays[name], np.load(io.BytesIO(served)))


def test_class_model_frames_are_the_servers_pixels_and_progress_climbs(lens):
    job = lens.run("class_model", image="chelsea", params={"steps": 6, "every": 1}, seed=7)
    events = list(job.events(format="png", timeout=300))
    frames = [e for e in events if isinstance(e, Frame)]
    steps = [e.step for e in events if isinstance(e, Progress)]
    assert isinstance(events[-1], Done)
    assert frames and [f.seq for f in frames] == sorted({f.seq for f in frames})
    assert steps and steps == sorted(steps) and steps[-1] == 6
    record = job.wait(timeout=60)
    # PNG is lossless: the last frame is the result's very picture.
    assert frames[-1].seq == record["frames"] - 1 and frames[-1].mime == "image/png"
    assert frames[-1].pixels.dtype == np.uint8 and frames[-1].pixels.ndim == 3
    assert np.array_equal(frames[-1].pixels, job.images()["class_model"])


def test_a_loop_holding_a_frame_is_sent_only_the_newest_one_after_it(lens):
    """The page's backpressure: one frame in flight, acknowledged when the loop asks for the next event."""
    job = lens.run("class_model", image="chelsea", params={"steps": 8, "every": 1}, seed=2)
    events = job.events(format="png", timeout=300)
    first = next(e for e in events if isinstance(e, Frame))
    record = job.wait(timeout=300)  # the job runs to its end while the loop holds the first frame
    assert record["frames"] - 1 > first.seq + 1, "the job drew more frames while the loop held one"
    later = list(events)
    assert isinstance(later[-1], Done)
    # Nothing was queued while it held one; the newest, sent on its ack, may come after the job's end.
    assert [e.seq for e in later if isinstance(e, Frame)] in ([], [record["frames"] - 1])


def test_pause_resume_and_stop_reach_the_job_and_end_its_events(lens):
    job = lens.run("class_model", image="chelsea", params={"steps": 500}, seed=3)
    answers, seen = [], []
    for event in job.events(format="jpeg", timeout=300):
        if isinstance(event, Progress) and not answers:
            answers = [job.pause()["state"], job.resume()["state"], job.stop()["state"]]
        if isinstance(event, State):
            seen.append(event.state)
    assert answers[:2] == ["paused", "running"]  # a stop is asked for: the job ends at its next step
    assert isinstance(event, Stopped) and seen[-1] == "stopped" and "paused" in seen
    assert job.state == "stopped"
    with pytest.raises(ClientError) as refused:
        job.result()
    assert refused.value.status == 409 and refused.value.field == "job"


def test_bad_params_are_a_client_error_naming_the_parameter(lens):
    with pytest.raises(ClientError) as refused:
        lens.run("class_model", params={"steps": -1})
    assert refused.value.field == "params.steps" and refused.value.status == 400
    with pytest.raises(ClientError) as refused:
        lens.run("saliency", model="no-such-model")
    assert refused.value.field == "model" and refused.value.status == 404


def test_a_wrong_url_says_nothing_answers_there():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServerUnreachable, match=f"no server answers at {url}") as refused:
        Client(url)
    assert isinstance(refused.value, ConnectionError)


@pytest.fixture(scope="module")
def other_server(start_server, tmp_path_factory) -> str:
    """A real server with a token whose installation says it is convlens 9.9.9: the installed metadata, copied
    with another version onto its ``PYTHONPATH``. It starts outside the checkout, whose ``convlens.egg-info``
    would come first on its path."""
    installed = next(Path(sysconfig.get_paths()["purelib"]).glob("convlens-*.dist-info"))
    shadow = tmp_path_factory.mktemp("other-version")
    copy = shutil.copytree(installed, shadow / f"convlens-{OTHER_VERSION}.dist-info")
    metadata = copy / "METADATA"
    lines = [
        f"Version: {OTHER_VERSION}" if line.startswith("Version:") else line
        for line in metadata.read_text().splitlines()
    ]
    metadata.write_text("\n".join(lines) + "\n")
    here = os.getcwd()
    os.chdir(shadow)
    try:
        return start_server(env={"CONVLENS_TOKEN": TOKEN, "PYTHONPATH": str(shadow)})
    finally:
        os.chdir(here)


def test_a_wrong_or_missing_token_is_a_client_error_naming_token(other_server):
    for token in (None, "wrong"):
        with pytest.raises(ClientError) as refused:
            Client(other_server, token=token)
        assert refused.value.field == "token" and refused.value.status == 401


def test_a_server_of_another_version_warns_naming_both_and_still_serves(other_server):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lens = Client(other_server, token=TOKEN)
    mismatches = [w for w in caught if issubclass(w.category, VersionMismatch)]
    assert len(mismatches) == 1
    assert f"convlens {OTHER_VERSION}" in str(mismatches[0].message)
    assert f"this client is {client_version()}" in str(mismatches[0].message)
    job = lens.run("saliency", image="chelsea", seed=1)  # the socket carries the token too
    assert isinstance(list(job.events(timeout=300))[-1], Done)


def test_the_progress_bar_draws_only_where_asked_or_on_a_terminal():
    quiet = io.StringIO()
    bar = ProgressBar("class_model", stream=quiet)  # a StringIO is no terminal
    bar.update(3, 10)
    bar.close()
    assert quiet.getvalue() == ""
    drawn = io.StringIO()
    bar = ProgressBar("class_model", shown=True, stream=drawn)
    bar.update(3, 10)
    bar.update(10, 10)
    bar.close()
    assert "class_model" in drawn.getvalue() and "10/10" in drawn.getvalue()
