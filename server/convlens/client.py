"""A Python client for a convlens server: list, upload, run a job, watch its frames as numpy arrays, download.

    client = Client("http://127.0.0.1:5000", token=None)
    job = client.run("class_model", image=client.upload(pixels), params={"steps": 20}, seed=1)
    for event in job.events(format="png"):   # Frame, Progress, Metrics, Log, State, then Done/Failed/Stopped
        ...
    job.download("out/")

REST for everything but the job's events, which come over Socket.IO with the page's backpressure: each frame
is acknowledged once the loop asks for the next event, so the server has at most one frame in flight to this
client and a slow loop gets fewer, newer frames. Needs ``requests`` and ``python-socketio[client]``.
"""

from __future__ import annotations

import io
import queue
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import requests
from PIL import Image

ENDED = ("done", "failed", "stopped")
FORMATS = ("png", "jpeg", "webp")


class ClientError(Exception):
    """The server refused a request (its JSON ``{error, field}`` and HTTP status), or the client refused an
    argument before sending it (``status`` ``None``)."""

    def __init__(self, field: str | None, reason: str, status: int | None = None) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason
        self.status = status


class ServerUnreachable(ConnectionError):
    """Nothing answers at the URL, or what answers is not a convlens server."""


class VersionMismatch(UserWarning):
    """The server runs another convlens version than this client."""


def client_version() -> str:
    """This installation's convlens version, as the server reports its own (``info.version`` of its OpenAPI)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("convlens")
    except PackageNotFoundError:
        return "0"


@dataclass(frozen=True)
class Model:
    id: str
    title: str
    default: bool = False
    input_size: tuple[int, int] | None = None
    error: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Method:
    name: str
    title: str
    topic: str = ""
    params: list[dict[str, Any]] = field(default_factory=list, repr=False)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class ImageInfo:
    id: str
    title: str
    url: str
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Dataset:
    id: str
    title: str
    count: int
    labels: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Frame:
    """One frame the job drew; ``pixels`` is HxWx3 uint8 decoded from the server's PNG/JPEG/WebP."""

    seq: int
    step: int | None
    label: str
    mime: str
    pixels: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class Progress:
    step: int
    total: int | None


@dataclass(frozen=True)
class Metrics:
    """The metrics points since the last send, oldest first; ``step`` and ``values`` are the newest's."""

    step: int | None
    values: dict[str, float]
    points: list[dict[str, Any]]


@dataclass(frozen=True)
class Log:
    level: str
    message: str


@dataclass(frozen=True)
class State:
    """The job's record (``GET /api/jobs/<id>``) whenever its state changes."""

    state: str
    job: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class Done:
    result: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class Failed:
    error: str | None


@dataclass(frozen=True)
class Stopped:
    pass


Event = Frame | Progress | Metrics | Log | State | Done | Failed | Stopped


def decode_image(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def png_of_array(pixels: np.ndarray) -> bytes:
    """HxWx3 uint8, or floats in [0, 1] (rounded as the server rounds), as PNG; ``ClientError`` naming
    ``image`` otherwise."""
    array = np.asarray(pixels)
    if array.ndim != 3 or array.shape[2] != 3 or min(array.shape[:2]) < 1:
        raise ClientError("image", f"expected an H×W×3 array, got shape {array.shape}")
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ClientError("image", "a float array must hold numbers in [0, 1]")
        array = np.round(array * 255).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ClientError("image", f"expected uint8 or float pixels, got {array.dtype}")
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


class ProgressBar:
    """tqdm where installed, else one rewritten stderr line; shown only when ``stream`` is a terminal
    unless ``shown`` says otherwise."""

    def __init__(self, title: str, shown: bool | None = None, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.shown = self.stream.isatty() if shown is None else shown
        self.title = title
        self._bar = None
        self._last = 0
        if self.shown:
            try:
                from tqdm import tqdm

                self._bar = tqdm(desc=title, file=self.stream, unit="step")
            except ImportError:
                pass

    def update(self, step: int, total: int | None) -> None:
        if not self.shown:
            return
        if self._bar is not None:
            if total and self._bar.total != total:
                self._bar.total = total
                self._bar.refresh()
            self._bar.update(max(0, step - self._last))
        else:
            self.stream.write(f"\r{self.title}: {step}/{total or '?'}")
            self.stream.flush()
        self._last = max(self._last, step)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.shown:
            self.stream.write("\n")


class Client:
    """A connection to one convlens server: ``url`` (e.g. ``http://127.0.0.1:5000``) and its token if it has one.

    Connecting reads the server's OpenAPI document: nothing answering raises :class:`ServerUnreachable`, a
    wrong or missing token :class:`ClientError` naming ``token``, another convlens version warns
    :class:`VersionMismatch` naming both.
    """

    def __init__(self, url: str, token: str | None = None, timeout: float = 60) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.session = requests.Session()
        if token is not None:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.server_version = str(self._json("GET", "/api/openapi.json").get("info", {}).get("version", "?"))
        mine = client_version()
        if self.server_version != mine:
            warnings.warn(
                f"the server at {self.url} runs convlens {self.server_version}, this client is {mine}",
                VersionMismatch,
                stacklevel=2,
            )

    def _request(self, verb: str, path: str, **kwargs: Any) -> requests.Response:
        try:
            answer = self.session.request(verb, self.url + path, timeout=self.timeout, **kwargs)
        except requests.ConnectionError as error:
            raise ServerUnreachable(f"no server answers at {self.url}: {error}") from None
        if answer.status_code >= 400:
            try:
                body = answer.json()
            except ValueError:
                raise ServerUnreachable(
                    f"{self.url} answered {verb} {path} with HTTP {answer.status_code} and no convlens error: "
                    "is it a convlens server?"
                ) from None
            if not isinstance(body, dict) or "error" not in body:
                raise ServerUnreachable(f"{self.url} answered {answer.status_code} without a convlens error")
            raise ClientError(body.get("field"), str(body["error"]), answer.status_code)
        return answer

    def _json(self, verb: str, path: str, **kwargs: Any) -> Any:
        answer = self._request(verb, path, **kwargs)
        try:
            return answer.json()
        except ValueError:
            raise ServerUnreachable(
                f"{self.url}{path} did not answer JSON: is it a convlens server?"
            ) from None

    def models(self) -> list[Model]:
        return [
            Model(
                m["id"],
                m.get("title", m["id"]),
                bool(m.get("default")),
                tuple(m["input_size"]) if m.get("input_size") else None,
                m.get("error"),
                m,
            )
            for m in self._json("GET", "/api/models")
        ]

    def default_model(self) -> str:
        """The id of the model the server's page picks first."""
        listed = self.models()
        return next((m.id for m in listed if m.default), listed[0].id if listed else "")

    def methods(self, model: str | None = None) -> list[Method]:
        """The analysis methods; with ``model``, each one's ``raw["unavailable"]`` says whether it can run on it."""
        query = {"model": model} if model else None
        return [
            Method(m["name"], m.get("title", m["name"]), m.get("topic", ""), m.get("params", []), m)
            for m in self._json("GET", "/api/methods", params=query)
        ]

    def images(self) -> list[ImageInfo]:
        """The samples and this client's uploads."""
        return [
            ImageInfo(i["id"], i.get("title", i["id"]), i.get("url", ""), i)
            for i in self._json("GET", "/api/images")
        ]

    def datasets(self) -> list[Dataset]:
        return [
            Dataset(d["id"], d.get("title", d["id"]), int(d.get("count", 0)), list(d.get("labels", [])), d)
            for d in self._json("GET", "/api/datasets")
        ]

    def upload(self, image: str | Path | bytes | np.ndarray, name: str | None = None) -> str:
        """Upload a picture (a file's path, its bytes, or an HxWx3 array) → its image id."""
        if isinstance(image, np.ndarray):
            data, filename = png_of_array(image), name or "array.png"
        elif isinstance(image, (bytes, bytearray)):
            data, filename = bytes(image), name or "upload"
        else:
            path = Path(image)
            data, filename = path.read_bytes(), name or path.name
        return self._json("POST", "/api/images", files={"file": (filename, data)})["id"]

    def image(self, image_id: str) -> np.ndarray:
        """An image's pixels as the server keeps them, HxWx3 uint8."""
        return decode_image(self._request("GET", f"/api/images/{image_id}").content)

    def run(
        self,
        method: str,
        model: str | None = None,
        image: str = "chelsea",
        params: dict[str, Any] | None = None,
        seed: int | None = None,
    ) -> JobHandle:
        """Start a job (the server's default model when ``model`` is ``None``) → its handle."""
        body: dict[str, Any] = {
            "method": method,
            "model": model or self.default_model(),
            "image": image,
            "params": params or {},
        }
        if seed is not None:
            body["seed"] = seed
        return JobHandle(self, self._json("POST", "/api/jobs", json=body))

    def job(self, job_id: str) -> JobHandle:
        """A handle on a job that already exists."""
        return JobHandle(self, self._json("GET", f"/api/jobs/{job_id}"))


class JobHandle:
    """One job on the server: watch it, control it, fetch its result."""

    def __init__(self, client: Client, job: dict[str, Any]) -> None:
        self.client = client
        self.id: str = job["id"]
        self.method: str = job["method"]
        self.job = job

    def __repr__(self) -> str:
        return f"JobHandle({self.id!r}, {self.method!r})"

    def refresh(self) -> dict[str, Any]:
        self.job = self.client._json("GET", f"/api/jobs/{self.id}")
        return self.job

    @property
    def state(self) -> str:
        return self.refresh()["state"]

    def _action(self, action: str) -> dict[str, Any]:
        self.job = self.client._json("POST", f"/api/jobs/{self.id}/{action}")
        return self.job

    def stop(self) -> dict[str, Any]:
        return self._action("stop")

    def pause(self) -> dict[str, Any]:
        return self._action("pause")

    def resume(self) -> dict[str, Any]:
        return self._action("resume")

    def again(self) -> JobHandle:
        """A new job of this ended job's request and seed; once done, its ``same_result`` says whether its
        result's hash equals this one's."""
        return JobHandle(self.client, self.client._json("POST", f"/api/jobs/{self.id}/again"))

    def events(self, format: str = "png", timeout: float | None = None) -> Iterator[Event]:
        """The job's events from now to its end over Socket.IO, ending with ``Done``, ``Failed`` or ``Stopped``.

        ``format`` is the frames' encoding: ``png`` (exact pixels), ``jpeg`` or ``webp`` (smaller). A frame is
        acknowledged when the loop asks for the next event; until then the server keeps only the newest frame
        for this client, so a loop slower than the job may end (at ``Done``) before that newest frame comes:
        the result's images (:meth:`images`) are the final pictures. ``timeout``: the longest wait for one
        event (``TimeoutError``), ``None`` for no limit.
        """
        if format not in FORMATS:
            raise ClientError("format", f"expected one of {list(FORMATS)}, got {format!r}")
        import socketio

        inbox: queue.Queue[tuple[str, dict]] = queue.Queue()
        sio = socketio.Client(reconnection=False)
        for name in ("job", "progress", "metrics", "log", "frame", *ENDED):
            sio.on(name, lambda message, name=name: inbox.put((name, message)))
        try:
            sio.connect(
                self.client.url,
                transports=["websocket"],
                auth={"token": self.client.token} if self.client.token else None,
                wait_timeout=self.client.timeout,
            )
        except socketio.exceptions.ConnectionError as error:
            if "token" in str(error):
                raise ClientError("token", str(error), 401) from None
            raise ServerUnreachable(f"no Socket.IO connection to {self.client.url}: {error}") from None
        try:
            answer = sio.call("subscribe", {"job": self.id, "format": format}, timeout=self.client.timeout)
            if not answer.get("ok"):
                raise ClientError(answer.get("field"), answer.get("error", "refused"), answer.get("status"))
            while True:
                try:
                    name, message = inbox.get(timeout=timeout)
                except queue.Empty:
                    raise TimeoutError(f"no event from job {self.id} in {timeout} s") from None
                if message.get("job") not in (None, self.id):
                    continue
                event = _event(name, message)
                if event is None:
                    continue
                if isinstance(event, State):
                    self.job = event.job
                yield event
                if isinstance(event, Frame):
                    sio.emit("frame_ack", {"job": self.id, "seq": event.seq})
                if name in ENDED:
                    return
        finally:
            sio.disconnect()

    def wait(self, timeout: float | None = None, progress: bool | None = None, poll_s: float = 0.2) -> dict:
        """Wait for the job to end → its record; ``TimeoutError`` after ``timeout`` seconds. A progress bar is
        drawn on stderr when it is a terminal (``progress`` forces it on or off)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = ProgressBar(f"{self.method} {self.id}", progress)
        try:
            while True:
                job = self.refresh()
                step = job.get("progress") or {}
                if "step" in step:
                    bar.update(int(step["step"]), step.get("total"))
                if job["state"] in ENDED:
                    return job
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {self.id} still {job['state']} after {timeout} s")
                time.sleep(poll_s)
        finally:
            bar.close()

    def result(self) -> dict[str, Any]:
        """The run's ``result.json``; ``ClientError`` (409) while it has none."""
        return self.client._json("GET", f"/api/jobs/{self.id}/result")

    def arrays(self) -> dict[str, np.ndarray]:
        """The result's arrays by name."""
        return {
            name: np.load(io.BytesIO(self.client._request("GET", url).content), allow_pickle=False)
            for name, url in self.result().get("array_urls", {}).items()
        }

    def images(self) -> dict[str, np.ndarray]:
        """The result's images by name, HxWx3 uint8."""
        return {
            name: decode_image(self.client._request("GET", url).content)
            for name, url in self.result().get("images", {}).items()
        }

    def report(self, path: str | Path = ".") -> Path:
        """Write the done run's self-contained HTML report to ``path`` (a file, or a folder for the server's name
        ``convlens-<method>-<id>.html``) → the path written; ``ClientError`` (409) before it is done."""
        answer = self.client._request("GET", f"/api/jobs/{self.id}/report.html", params={"download": 1})
        out = Path(path)
        if out.is_dir():
            out = out / f"convlens-{self.method}-{self.id}.html"
        out.write_bytes(answer.content)
        return out

    def download(self, directory: str | Path) -> list[Path]:
        """Write ``result.json``, the images, arrays and ``frames.gif`` into ``directory`` under the server's
        file names → the paths written."""
        import json

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        result = self.result()
        wanted = [
            (f"/api/jobs/{self.id}/images/{name}.png", file) for name, file in result.get("files", {}).items()
        ]
        wanted += [
            (f"/api/jobs/{self.id}/arrays/{name}.npy", file)
            for name, file in result.get("arrays", {}).items()
        ]
        if result.get("animation"):
            wanted.append((f"/api/jobs/{self.id}/frames.gif", "frames.gif"))
        written = [out / "result.json"]
        written[0].write_text(json.dumps(result, indent=2))
        for url, file in wanted:
            path = out / Path(file).name  # never a path out of ``directory``, whatever the server names it
            path.write_bytes(self.client._request("GET", url).content)
            written.append(path)
        return written


def _event(name: str, message: dict[str, Any]) -> Event | None:
    if name == "frame":
        return Frame(
            message["seq"],
            message.get("step"),
            message.get("label", ""),
            message["mime"],
            decode_image(message["data"]),
        )
    if name == "progress":
        return Progress(int(message.get("step", 0)), message.get("total"))
    if name == "metrics":
        return Metrics(
            message.get("step"), dict(message.get("values") or {}), list(message.get("points") or [])
        )
    if name == "log":
        return Log(str(message.get("level", "info")), str(message.get("message", "")))
    if name == "job":
        return State(message["state"], message)
    if name == "done":
        return Done(message.get("result") or {})
    if name == "failed":
        return Failed(message.get("error"))
    if name == "stopped":
        return Stopped()
    return None


__all__ = [
    "Client",
    "ClientError",
    "Dataset",
    "Done",
    "Event",
    "Failed",
    "Frame",
    "ImageInfo",
    "JobHandle",
    "Log",
    "Method",
    "Metrics",
    "Model",
    "Progress",
    "ServerUnreachable",
    "State",
    "Stopped",
    "VersionMismatch",
]
