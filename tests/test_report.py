"""A done run as one self-contained HTML report (``GET /api/jobs/<id>/report.html``, ``convlens report``,
``JobHandle.report``): the result's files byte for byte, charts whose points read back as the job's metrics,
parameters and model hash as recorded, nothing outside the file, user text escaped, files deleted by hand named."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from test_api import start_job, wait_for

from convlens.events import Frame, Log, Metrics, Progress, Result
from convlens.methods import Method
from convlens.params import Param

NOTE = "<script>alert('note')</script> & \"quoted\""
ODD_IMAGE = "odd<script>x"
STEPS = 12


def run_probe(ctx):
    """Three metrics (two of them the group ``loss``), a frame a step, two images, an array, a log line."""
    yield Log(f"note: {ctx.params['note']}")
    for step in range(STEPS):
        yield Frame(np.full((8, 12, 3), step * 20, np.uint8), step=step, label="probe")
        yield Metrics(
            {"a.loss": 3.0 / (step + 1), "b.loss": 0.5 + 0.1 * step, "accuracy": step / 11}, step=step
        )
        yield Progress(step + 1, STEPS)
    ramp = np.linspace(0, 1, 24 * 32).reshape(24, 32)
    yield Result(
        images={"ramp": np.stack([ramp, 1 - ramp, ramp * 0.5], axis=-1), ODD_IMAGE: np.ones((4, 4, 3))},
        arrays={"grid": np.arange(12, dtype=np.float32).reshape(3, 4)},
        data={"note": ctx.params["note"]},
    )


PROBE = Method(
    name="report_probe",
    title="Report probe",
    topic="Tests",
    run=run_probe,
    params=(Param("note", "string", default=""),),
)


@pytest.fixture
def probe_job(client, extra_methods) -> dict:
    """A done run of :data:`PROBE` with the note :data:`NOTE`, as ``GET /api/jobs/<id>`` answers."""
    extra_methods(PROBE)
    job = wait_for(client, start_job(client, PROBE.name, params={"note": NOTE}, seed=7))
    assert job["state"] == "done", job
    return job


class Page(HTMLParser):
    """Every start tag with its attributes, the text, and the text of each ``<style>``."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.styles: list[str] = []
        self._in_style = False
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        self._in_style = False

    def handle_data(self, data):
        (self.styles if self._in_style else self.text).append(data)

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.tags if name == tag]


def report_of(client, job_id: str) -> str:
    answer = client.get(f"/api/jobs/{job_id}/report.html")
    assert answer.status_code == 200 and answer.mimetype == "text/html", answer.data[:300]
    return answer.get_data(as_text=True)


def data_uri_bytes(uri: str, mime: str) -> bytes:
    head, _, payload = uri.partition(",")
    assert head == f"data:{mime};base64", head
    return base64.b64decode(payload, validate=True)


def test_every_result_image_is_inlined_byte_for_byte_and_nothing_is_fetched(app, client, probe_job):
    page = Page(report_of(client, probe_job["id"]))
    folder = app.extensions["convlens"].jobs.results_dir / probe_job["id"]
    result = probe_job["result"]
    figures = {attrs["data-name"]: i for i, (tag, attrs) in enumerate(page.tags) if tag == "figure"}
    for name, filename in result["files"].items():
        img = page.tags[figures[name] + 1]
        assert (
            img[0] == "img" and data_uri_bytes(img[1]["src"], "image/png") == (folder / filename).read_bytes()
        )
    gif = page.tags[figures["frames.gif"] + 1][1]["src"]
    assert data_uri_bytes(gif, "image/gif") == (folder / "frames.gif").read_bytes()
    # No request at all: every src is a data URI, no href, no script, stylesheet or frame, no url() in the CSS.
    assert all(attrs["src"].startswith("data:") for attrs in page.all("img"))
    assert not [attrs for _, attrs in page.tags if "href" in attrs or "xlink:href" in attrs]
    assert not {"script", "link", "iframe", "object", "embed", "base"} & {tag for tag, _ in page.tags}
    assert "url(" not in "".join(page.styles) and "@import" not in "".join(page.styles)
    # The arrays are listed, not inlined.
    text = " ".join(page.text)
    assert "grid" in text and "3×4" in text and "float32" in text


def svg_elements(html: str) -> list[ET.Element]:
    """Each inline ``<svg>`` parsed as XML (it must be well-formed)."""
    parts = html.split("<svg")[1:]
    return [ET.fromstring("<svg" + part.split("</svg>")[0] + "</svg>") for part in parts]


def axis(svg: ET.Element, which: str) -> tuple[float, float, float, float]:
    """Two ticks of an axis as ``(pixel, value, pixel, value)``: its first and last labelled tick."""
    ticks = [g for g in svg.iter("g") if g.get("class") == f"tick {which}"]
    coordinate = "y1" if which == "y" else "x1"
    pairs = [(float(g.find("line").get(coordinate)), float(g.find("text").text)) for g in ticks]
    assert len(pairs) >= 2
    return (*pairs[0], *pairs[-1])


def test_the_charts_points_read_back_through_their_ticks_as_the_jobs_metrics(
    client, socket_client, probe_job
):
    job_id = probe_job["id"]
    socket_client.emit("subscribe", {"job": job_id}, callback=True)
    (history,) = [
        m["args"][0]["history"] for m in socket_client.get_received() if m["name"] == "metrics_history"
    ]
    assert len(history) == STEPS
    charts = {svg.get("data-group"): svg for svg in svg_elements(report_of(client, job_id))}
    assert set(charts) == {"loss", "accuracy"}
    assert [t.text for t in charts["loss"].iter("text") if t.text and t.text.endswith(".loss")] == [
        "a.loss",
        "b.loss",
    ], "the legend names both curves of the group"
    assert {line.get("data-metric") for line in charts["loss"].iter("polyline")} == {"a.loss", "b.loss"}
    seen = set()
    for svg in charts.values():
        px0, x0, px1, x1 = axis(svg, "x")
        py0, y0, py1, y1 = axis(svg, "y")
        for line in svg.iter("polyline"):
            name = line.get("data-metric")
            seen.add(name)
            points = [tuple(map(float, pair.split(","))) for pair in line.get("points").split()]
            steps = [x0 + (px - px0) / (px1 - px0) * (x1 - x0) for px, _ in points]
            values = [y0 + (py - py0) / (py1 - py0) * (y1 - y0) for _, py in points]
            expected = [point["values"][name] for point in history]
            assert np.allclose(
                steps, [point["step"] for point in history], atol=abs(x1 - x0) / abs(px1 - px0)
            )
            # Within a pixel: the value one pixel spans on this chart.
            assert np.allclose(values, expected, atol=abs(y1 - y0) / abs(py1 - py0)), (name, values, expected)
            assert values[-1] == pytest.approx(probe_job["metrics"][name], abs=abs(y1 - y0) / abs(py1 - py0))
    assert seen == {"a.loss", "b.loss", "accuracy"}


class Rows(HTMLParser):
    """The text of each ``<tr>``'s cells (``<th>`` and ``<td>``) of one table."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("th", "td"):
            self.rows[-1].append("")

    def handle_data(self, data):
        if self.rows and self.rows[-1]:
            self.rows[-1][-1] += data


def table_rows(html: str, css_class: str) -> dict[str, str]:
    """The table of ``css_class``'s two-cell rows as ``{first: second}``."""
    section = html.split(f"<table class='{css_class}'>")[1].split("</table>")[0]
    return dict(Rows(section).rows)


def test_parameters_seed_and_model_hash_are_the_records(client, probe_job, models_dir):
    html = report_of(client, probe_job["id"])
    params = table_rows(html, "params")
    assert int(params.pop("seed")) == probe_job["seed"] == 7
    assert {name: json.loads(value) for name, value in params.items()} == probe_job["params"]
    model = table_rows(html, "model")
    recorded = probe_job["result"]["model"]
    assert model["sha256"] == recorded["sha256"]
    assert model["sha256"] == hashlib.sha256((models_dir / probe_job["model"]).read_bytes()).hexdigest()
    assert model["Format"] == recorded["format"] and model["Image id"] == probe_job["image"]


def test_user_text_is_escaped_never_markup(client, probe_job):
    html = report_of(client, probe_job["id"])
    page = Page(html)
    assert "script" not in {tag for tag, _ in page.tags}
    text = "".join(page.text)
    assert f"note: {NOTE}" in text, "the log line, as written"
    assert json.dumps(NOTE) in text, "the parameter, as JSON"
    assert ODD_IMAGE in {attrs["data-name"] for attrs in page.all("figure")}


def test_a_job_not_done_is_409_naming_job_and_an_unknown_one_404(client, extra_methods):
    release = threading.Event()

    def run_waiting(ctx):
        yield Progress(0, 1)
        release.wait(60)
        yield Result()

    extra_methods(Method(name="report_waiting", title="Waiting", topic="Tests", run=run_waiting))
    job_id = start_job(client, "report_waiting")
    try:
        answer = client.get(f"/api/jobs/{job_id}/report.html")
        assert answer.status_code == 409 and answer.get_json()["field"] == "job", answer.get_json()
    finally:
        release.set()
    assert wait_for(client, job_id)["state"] == "done"
    assert client.get(f"/api/jobs/{job_id}/report.html").status_code == 200
    unknown = client.get("/api/jobs/0123456789ab/report.html")
    assert unknown.status_code == 404 and unknown.get_json()["field"] == "job"
    bad = client.get(f"/api/jobs/{job_id}/report.html?download=2")
    assert bad.status_code == 400 and bad.get_json()["field"] == "download"


def test_files_deleted_by_hand_are_named_missing_and_the_rest_still_shown(app, client, probe_job):
    folder = app.extensions["convlens"].jobs.results_dir / probe_job["id"]
    (folder / "ramp.png").unlink()
    (folder / "frames.gif").unlink()
    (folder / "grid.npy").unlink()
    page = Page(report_of(client, probe_job["id"]))
    missing = {attrs["data-missing"] for _, attrs in page.tags if "data-missing" in attrs}
    assert missing == {"ramp.png", "frames.gif"}
    assert [attrs["data-name"] for attrs in page.all("figure")] == ["input", ODD_IMAGE]
    assert "missing" in " ".join(page.text).split("grid.npy")[1][:40], "the array's row says it is missing"
    shutil.rmtree(folder)
    page = Page(report_of(client, probe_job["id"]))
    assert {attrs["data-missing"] for _, attrs in page.tags if "data-missing" in attrs} == {
        f"{ODD_IMAGE}.png",
        "ramp.png",
        "frames.gif",
    }


def test_an_animation_over_the_cap_is_left_out_and_the_report_says_so(client, probe_job, monkeypatch):
    import convlens.report

    monkeypatch.setattr(convlens.report, "GIF_MAX_BYTES", 100)
    page = Page(report_of(client, probe_job["id"]))
    assert "frames.gif" not in {attrs["data-name"] for attrs in page.all("figure")}
    assert "left out: over the report's" in " ".join(page.text)


def test_download_is_an_attachment_named_after_method_and_id(client, probe_job):
    answer = client.get(f"/api/jobs/{probe_job['id']}/report.html?download=1")
    assert answer.status_code == 200
    name = f"convlens-report_probe-{probe_job['id']}.html"
    assert answer.headers["Content-Disposition"] == f'attachment; filename="{name}"'


def convlens(*args: str, data_dir: Path, cwd: Path) -> subprocess.CompletedProcess:
    environment = {**os.environ, "CONVLENS_DATA_DIR": str(data_dir)}
    command = [sys.executable, "-m", "convlens", *args]
    return subprocess.run(command, env=environment, cwd=cwd, capture_output=True, text=True, timeout=300)


def without_written_line(html: str) -> str:
    """The report less its last lines (the time it was written)."""
    return html.rsplit("<p class='note'>Written by", 1)[0]


def test_the_cli_writes_a_done_runs_report_from_the_data_folder(app, app_config, client, tmp_path):
    job = wait_for(client, start_job(client, "deepdream", params={"steps": 3, "octaves": 1, "jitter": 0}))
    assert job["state"] == "done"
    name = f"convlens-deepdream-{job['id']}.html"
    made = convlens("report", job["id"], data_dir=app_config.data_dir, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [name], "only the report is written, where asked"
    served = report_of(client, job["id"])
    assert without_written_line((tmp_path / name).read_text()) == without_written_line(served)

    again = convlens("report", job["id"], data_dir=app_config.data_dir, cwd=tmp_path)
    assert again.returncode == 2 and "--force" in again.stderr
    chosen = tmp_path / "notes" / "run.html"
    chosen.parent.mkdir()
    forced = convlens("report", job["id"], "-o", str(chosen), data_dir=app_config.data_dir, cwd=tmp_path)
    assert forced.returncode == 0 and chosen.read_text().startswith("<!DOCTYPE html>"), forced.stderr

    unknown = convlens("report", "nosuchjob", data_dir=app_config.data_dir, cwd=tmp_path)
    assert unknown.returncode == 2 and "unknown job 'nosuchjob'" in unknown.stderr
    empty = convlens("report", job["id"], data_dir=tmp_path / "empty", cwd=tmp_path)
    assert empty.returncode == 2 and "no job records" in empty.stderr
    assert not (tmp_path / "empty").exists(), "a report never makes a data folder"


def test_the_python_client_saves_the_report(live_server, tmp_path):
    from convlens.client import Client, ClientError

    client = Client(live_server)
    stopped = client.run("deepdream", params={"steps": 500, "octaves": 1})
    stopped.stop()
    assert stopped.wait(progress=False)["state"] == "stopped"
    with pytest.raises(ClientError) as refused:
        stopped.report(tmp_path)
    assert refused.value.status == 409 and refused.value.field == "job"
    handle = client.run("deepdream", params={"steps": 2, "octaves": 1})
    handle.wait(progress=False)
    path = handle.report(tmp_path)
    assert path == tmp_path / f"convlens-deepdream-{handle.id}.html"
    assert handle.result()["model"]["sha256"] in path.read_text()
    assert sorted(tmp_path.iterdir()) == [path]
