"""A finished run as one self-contained HTML file, for a lab notebook (``GET /api/jobs/<id>/report.html``,
``convlens report``).

Everything is inside the file: the result's PNGs (and GIF, up to :data:`GIF_MAX_BYTES`) as ``data:`` URIs of
exactly the files' bytes, the metrics as inline SVG charts drawn here, CSS in a ``<style>``. It makes no
request and needs no script, so it opens offline, prints, and says the same in ten years. Every value a user
or a plugin chose (parameters, image ids, names, log lines) is escaped.

A chart is one per metric group: metrics named ``<net>.<name>`` (``mlp.loss``, ``cnn.loss``) share the group
``<name>`` and one vertical scale, as curves told apart by the legend; any other name is a group of its own (the
page draws each metric in its own row, on a linear scale: so do these). Axis transform, in SVG user units::

    x = PLOT_LEFT + (step - x0) / (x1 - x0) * (CHART_WIDTH - PLOT_LEFT - PLOT_RIGHT)
    y = plot_bottom - (value - y0) / (y1 - y0) * (plot_bottom - plot_top)

where ``x0..x1`` and ``y0..y1`` are the first and last ticks (each a "nice" number: 1, 2 or 5 times a power of
ten, labelled exactly), so a reader (or a test) recovers a point's value from the tick labels alone.
"""

from __future__ import annotations

import base64
import json
import math
import time
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import __version__
from .errors import BadInput, NotFound

if TYPE_CHECKING:
    from .config import Config
    from .image_library import ImageLibrary
    from .jobs import Job
    from .plugins import MethodRegistry

GIF_MAX_BYTES = 8 * 2**20
"""A larger animation is left out of the report (which says so): a notebook page should stay light."""
INPUT_SIDE = 512
"""The input picture is shown fitted into this square."""
DATA_MAX_CHARS = 20_000
"""The result's ``data`` is shown as JSON up to this many characters."""
CHART_WIDTH = 640
PLOT_LEFT, PLOT_RIGHT = 72, 16
PLOT_HEIGHT = 150
LEGEND_ROW = 18
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#17becf", "#8c564b", "#e377c2")
"""Colours that stay apart on white paper (the page's, drawn on dark, do not all)."""

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;color:#111;background:#fff;max-width:960px;margin:2em auto;padding:0 1em}
h1{font-size:1.5em;margin:0 0 .3em}h2{font-size:1.15em;border-bottom:1px solid #ccc;margin-top:1.6em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left;vertical-align:top}
code,pre,.mono{font-family:ui-monospace,monospace;font-size:.92em}pre{white-space:pre-wrap;word-break:break-word}
.meta th{background:#f4f4f4}.missing{color:#a40000;font-weight:600}.note{color:#555}
figure{display:inline-block;margin:0 1em 1em 0;vertical-align:top}figure img{max-width:100%;
image-rendering:pixelated;border:1px solid #ccc}figcaption{font-size:.9em;color:#333}
svg.chart{display:block;margin:0 0 1em;max-width:100%;height:auto}svg text{font:11px system-ui,sans-serif}
.log .warning{color:#8a5a00}.log .error{color:#a40000}
@media print{body{margin:0;max-width:none}figure,svg.chart,table{break-inside:avoid}}
"""


def report_name(job: Job) -> str:
    """The report's file name: ``convlens-<method>-<id>.html``."""
    return f"convlens-{job.method}-{job.id}.html"


def check_reportable(job: Job) -> None:
    """A 409 naming ``job`` unless the job is done with a result (only a finished run has one to report)."""
    if job.state != "done" or job.result is None:
        raise BadInput("job", f"job {job.id!r} is {job.state}: only a done job has a report", status=409)


def report_html(job: Job, folder: Path, methods: MethodRegistry, images: ImageLibrary) -> str:
    """:func:`render_report` with the method's title and the input picture, when they are still there."""
    check_reportable(job)
    try:
        title = methods.get(job.method).title
    except NotFound:  # a plugin uninstalled since: its runs still report
        title = None
    try:
        picture = images.png(job.image, INPUT_SIDE)
        input_png = picture.read_bytes() if isinstance(picture, Path) else picture
    except (BadInput, OSError):  # an upload deleted since, a data set gone: the report says so
        input_png = None
    return render_report(job, folder, method_title=title, input_png=input_png)


def stored_job(config: Config, job_id: str) -> Job:
    """The job as the data folder's records (or the shared Redis store) have it; ``NotFound`` naming ``job``."""
    from .app import job_store
    from .jobs import Job

    where = config.redis_url or config.jobs_db
    if (
        not config.redis_url and not config.jobs_db.is_file()
    ):  # not made here: a report writes only where -o says
        raise NotFound("job", f"no job {job_id!r}: there are no job records at {where}")
    store = job_store(config)
    record = store.load(job_id)
    if record is None:
        raise NotFound("job", f"unknown job {job_id!r} in the job records at {where}")
    return Job.from_record(record)


def write_report(config: Config, job_id: str, out: Path | None = None, force: bool = False) -> Path:
    """``convlens report``: the done job's report written to ``out`` (a file, or a folder for the default name
    ``convlens-<method>-<id>.html``; default: that name here), never over a file unless ``force``."""
    from .app import build_dataset_library, build_library
    from .plugins import get_methods, get_plugin_manager

    job = stored_job(config, job_id)
    check_reportable(job)
    path = Path(out) if out is not None else Path(report_name(job))
    if path.is_dir():
        path = path / report_name(job)
    if path.exists() and not force:
        raise BadInput("out", f"{path} exists; give --force to overwrite it")
    pm = get_plugin_manager()
    images = build_library(pm, config)
    images.datasets = build_dataset_library(pm, config)  # a data set's image can be a job's picture
    html = report_html(job, config.results_dir / job.id, get_methods(), images)
    path.write_text(html, encoding="utf-8")
    return path


def render_report(
    job: Job, folder: Path, *, method_title: str | None = None, input_png: bytes | None = None
) -> str:
    """The report of the done ``job`` whose results are in ``folder``; ``input_png``: its input picture, if
    available. A file deleted by hand is named as missing."""
    check_reportable(job)
    result = job.result or {}
    title = method_title or job.method
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(f'convlens · {title} · {job.image} · {job.id}')}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{_e(title)} <span class='note'>({_e(job.method)})</span></h1>",
        _summary(job, result),
        _parameters(job),
        _model_and_image(job, result, input_png),
        _predictions(job, result),
        _images(result, folder),
        _arrays(result, folder),
        _charts(job.metrics_history),
        _data(result),
        _log(job.logs),
        f"<p class='note'>Written by convlens {_e(__version__)} on {_e(_when(time.time()))}.</p>",
        "</body></html>",
    ]
    return "\n".join(part for part in parts if part)


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _when(seconds: float | None) -> str:
    return "—" if seconds is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def _duration(job: Job) -> str:
    if job.started is None or job.finished is None:
        return "—"
    seconds = max(0.0, job.finished - job.started)
    return f"{seconds:.1f} s" if seconds < 60 else f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def _rows(pairs: list[tuple[str, str]]) -> str:
    """Table rows of already-escaped ``(label, value)`` HTML."""
    return "".join(f"<tr><th>{label}</th><td>{value}</td></tr>" for label, value in pairs)


def _summary(job: Job, result: dict[str, Any]) -> str:
    ran_with = result.get("convlens")
    return (
        "<table class='meta'>"
        + _rows(
            [
                ("Job", f"<code>{_e(job.id)}</code>"),
                ("Model", f"<code>{_e(job.model)}</code>"),
                ("Image", f"<code>{_e(job.image)}</code>"),
                ("State", _e(job.state)),
                ("Created", _e(_when(job.created))),
                ("Started", _e(_when(job.started))),
                ("Finished", _e(_when(job.finished))),
                ("Took", _e(_duration(job))),
                ("Frames", _e(job.frames)),
                ("convlens", _e(ran_with or "unknown")),
            ]
        )
        + "</table>"
    )


def _parameters(job: Job) -> str:
    rows = [
        (f"<code>{_e(name)}</code>", f"<code>{_e(json.dumps(value))}</code>")
        for name, value in job.params.items()
    ]
    rows.append(("<code>seed</code>", f"<code>{_e(job.seed)}</code>"))
    return "<h2>Parameters</h2><table class='params'>" + _rows(rows) + "</table>"


def _model_and_image(job: Job, result: dict[str, Any], input_png: bytes | None) -> str:
    model = result.get("model") or {}
    table = _rows(
        [
            ("Model id", f"<code>{_e(model.get('id', job.model))}</code>"),
            ("Format", _e(model.get("format", "unknown"))),
            ("sha256", f"<code class='sha256'>{_e(model.get('sha256', 'unknown'))}</code>"),
            ("Image id", f"<code>{_e(result.get('image', job.image))}</code>"),
        ]
    )
    picture = (
        _figure("image/png", input_png, f"input: {job.image}", "input")
        if input_png
        else "<p class='note'>The input picture is no longer available.</p>"
    )
    return f"<h2>Model and input</h2><table class='model'>{table}</table>{picture}"


def _figure(mime: str, data: bytes, caption: str, name: str) -> str:
    uri = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    return (
        f"<figure data-name='{_e(name)}'><img src='{uri}' alt='{_e(caption)}'>"
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _predictions(job: Job, result: dict[str, Any]) -> str:
    tables = []
    if job.predictions:
        tables.append(_top_table("The model's top classes for the input", job.predictions, "index"))
    panels = (result.get("panel_predictions") or {}).get("tops") or {}
    for panel, tops in panels.items():
        tables.append(_top_table(f"Top classes: {panel}", tops, "class"))
    return "<h2>Top classes</h2>" + "".join(tables) if tables else ""


def _top_table(caption: str, tops: list[dict[str, Any]], index_key: str) -> str:
    rows = "".join(
        f"<tr><td>{_e(top.get(index_key))}</td><td>{_e(top.get('label'))}</td>"
        f"<td>{float(top.get('probability', math.nan)):.4f}</td></tr>"
        for top in tops
    )
    return (
        f"<table class='tops'><caption>{_e(caption)}</caption>"
        f"<tr><th>class</th><th>label</th><th>probability</th></tr>{rows}</table>"
    )


def _file(folder: Path, name: str) -> Path:
    return folder / Path(name).name  # never a path out of the results folder, whatever the record says


def _images(result: dict[str, Any], folder: Path) -> str:
    parts = []
    for name, filename in (result.get("files") or {}).items():
        path = _file(folder, filename)
        if path.is_file():
            parts.append(_figure("image/png", path.read_bytes(), name, name))
        else:
            parts.append(
                f"<p class='missing' data-missing='{_e(filename)}'>Missing: {_e(filename)} ({_e(name)}) was deleted from the results folder.</p>"
            )
    animation = result.get("animation")
    if animation:
        path = folder / "frames.gif"
        if not path.is_file():
            parts.append(
                "<p class='missing' data-missing='frames.gif'>Missing: frames.gif was deleted from the results folder.</p>"
            )
        elif path.stat().st_size > GIF_MAX_BYTES:
            size = path.stat().st_size / 2**20
            parts.append(
                f"<p class='note'>The animation (frames.gif, {size:.1f} MiB) is left out: over the report's {GIF_MAX_BYTES // 2**20} MiB cap.</p>"
            )
        else:
            parts.append(
                _figure(
                    "image/gif",
                    path.read_bytes(),
                    f"the run's frames ({result.get('frames', '?')})",
                    "frames.gif",
                )
            )
    return "<h2>Result images</h2>" + "".join(parts) if parts else ""


def _arrays(result: dict[str, Any], folder: Path) -> str:
    rows = []
    for name, filename in (result.get("arrays") or {}).items():
        path = _file(folder, filename)
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)  # the header only: nothing is read
            shape, dtype = "×".join(map(str, array.shape)) or "scalar", str(array.dtype)
        except (OSError, ValueError):
            shape, dtype = "<span class='missing'>missing</span>", ""
        rows.append(
            f"<tr><td>{_e(name)}</td><td><code>{_e(Path(filename).name)}</code></td><td>{shape}</td><td>{_e(dtype)}</td></tr>"
        )
    if not rows:
        return ""
    head = "<tr><th>array</th><th>file</th><th>shape</th><th>dtype</th></tr>"
    return f"<h2>Arrays</h2><p class='note'>Not inlined; beside result.json.</p><table class='arrays'>{head}{''.join(rows)}</table>"


@dataclass
class Series:
    name: str
    steps: list[float]
    values: list[float]


def metric_groups(history: list[dict[str, Any]]) -> dict[str, list[Series]]:
    """The history's finite values by group and metric (see the module's docstring); a point without a step is
    placed at its index, as the page places it."""
    series: dict[str, Series] = {}
    for index, point in enumerate(history):
        step = point.get("step")
        step = index if step is None else step
        for name, value in (point.get("values") or {}).items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                entry = series.setdefault(name, Series(name, [], []))
                entry.steps.append(float(step))
                entry.values.append(float(value))
    groups: dict[str, list[Series]] = {}
    for name, entry in series.items():
        groups.setdefault(name.rsplit(".", 1)[-1], []).append(entry)
    return groups


def nice_ticks(low: float, high: float, count: int = 5) -> tuple[list[float], int]:
    """Ticks from a multiple of a 1-2-5 step at or below ``low`` to one at or above ``high``, and the decimals
    that print them exactly."""
    if not high > low:
        pad = abs(high) * 0.05 or 1.0
        low, high = low - pad, high + pad
    rough = (high - low) / count
    power = 10 ** math.floor(math.log10(rough))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= rough)
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return [round(i * step, decimals) for i in range(first, last + 1)], decimals


def chart_svg(group: str, series: list[Series]) -> str:
    """One group's curves as an SVG line chart: legend, axes with ticks and labels, a polyline per metric."""
    per_row = max(1, (CHART_WIDTH - PLOT_LEFT) // 150)
    legend_rows = math.ceil(len(series) / per_row)
    top = 26 + legend_rows * LEGEND_ROW
    bottom = top + PLOT_HEIGHT
    right = CHART_WIDTH - PLOT_RIGHT
    height = bottom + 40
    x_ticks, x_decimals = nice_ticks(min(s.steps[0] for s in series), max(s.steps[-1] for s in series))
    y_ticks, y_decimals = nice_ticks(min(min(s.values) for s in series), max(max(s.values) for s in series))
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]

    def x(step: float) -> float:
        return PLOT_LEFT + (step - x0) / (x1 - x0) * (right - PLOT_LEFT)

    def y(value: float) -> float:
        return bottom - (value - y0) / (y1 - y0) * (bottom - top)

    out = [
        f"<svg class='chart' data-group='{_e(group)}' width='{CHART_WIDTH}' height='{height}' "
        f"viewBox='0 0 {CHART_WIDTH} {height}' role='img' aria-label='{_e(group)} by step'>",
        f"<text x='{PLOT_LEFT}' y='16' font-weight='600'>{_e(group)}</text>",
    ]
    for rank, entry in enumerate(series):
        lx = PLOT_LEFT + (rank % per_row) * 150
        ly = 22 + (rank // per_row) * LEGEND_ROW + 10
        colour = PALETTE[rank % len(PALETTE)]
        out.append(
            f"<g class='legend'><line x1='{lx}' y1='{ly - 4}' x2='{lx + 18}' y2='{ly - 4}' stroke='{colour}' "
            f"stroke-width='2.5'/><text x='{lx + 22}' y='{ly}'>{_e(entry.name)}</text></g>"
        )
    for value in y_ticks:
        py = y(value)
        out.append(
            f"<g class='tick y'><line x1='{PLOT_LEFT}' y1='{py:.2f}' x2='{right}' y2='{py:.2f}' stroke='#e3e3e3'/>"
            f"<text x='{PLOT_LEFT - 6}' y='{py + 4:.2f}' text-anchor='end'>{value:.{y_decimals}f}</text></g>"
        )
    for value in x_ticks:
        px = x(value)
        out.append(
            f"<g class='tick x'><line x1='{px:.2f}' y1='{bottom}' x2='{px:.2f}' y2='{bottom + 5}' stroke='#444'/>"
            f"<text x='{px:.2f}' y='{bottom + 18}' text-anchor='middle'>{value:.{x_decimals}f}</text></g>"
        )
    out.append(
        f"<rect x='{PLOT_LEFT}' y='{top}' width='{right - PLOT_LEFT}' height='{bottom - top}' fill='none' "
        "stroke='#444'/>"
        f"<text x='{(PLOT_LEFT + right) / 2}' y='{height - 6}' text-anchor='middle'>step</text>"
        f"<text transform='translate(14 {(top + bottom) / 2}) rotate(-90)' text-anchor='middle'>{_e(group)}</text>"
    )
    for rank, entry in enumerate(series):
        colour = PALETTE[rank % len(PALETTE)]
        points = " ".join(f"{x(s):.2f},{y(v):.2f}" for s, v in zip(entry.steps, entry.values, strict=True))
        out.append(
            f"<polyline class='series' data-metric='{_e(entry.name)}' points='{points}' fill='none' "
            f"stroke='{colour}' stroke-width='1.75' stroke-linejoin='round'/>"
        )
        if len(entry.steps) == 1:  # a line of one point draws nothing
            out.append(
                f"<circle cx='{x(entry.steps[0]):.2f}' cy='{y(entry.values[0]):.2f}' r='3' fill='{colour}'/>"
            )
    out.append("</svg>")
    return "".join(out)


def _charts(history: list[dict[str, Any]]) -> str:
    groups = metric_groups(history)
    if not groups:
        return ""
    charts = "".join(chart_svg(group, series) for group, series in groups.items())
    return f"<h2>Metrics</h2>{charts}"


def _data(result: dict[str, Any]) -> str:
    data = result.get("data")
    if not data:
        return ""
    text = json.dumps(data, indent=1)
    if len(text) > DATA_MAX_CHARS:
        text = text[:DATA_MAX_CHARS] + f"\n… {len(text) - DATA_MAX_CHARS} more characters in result.json"
    return f"<h2>Result data</h2><pre class='data'>{_e(text)}</pre>"


def _log(logs: list[dict[str, str]]) -> str:
    if not logs:
        return ""
    lines = "".join(
        f"<li class='{_e(line.get('level', 'info'))}'><b>{_e(line.get('level', 'info'))}</b> "
        f"{_e(line.get('message', ''))}</li>"
        for line in logs
    )
    return f"<h2>Log</h2><ol class='log mono'>{lines}</ol>"
