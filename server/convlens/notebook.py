"""convlens in a notebook: a job's live view and the comparison view as widgets, and a server in the kernel.

    import convlens
    client = convlens.notebook.serve()        # the embedded server, in a thread of this kernel
    job = client.run("deepdream", params={"steps": 20})
    convlens.show(job)                        # frames, progress, chart and controls, live
    convlens.compare(image="chelsea", methods=["saliency", "gradcam"], autorun=True)

The widgets are anywidget widgets (JupyterLab, Jupyter Notebook 7, VS Code, Colab) whose front end is
``web/dist/assets/widget.js``, the page's own elements built into one module. The browser showing the notebook
talks to the convlens server itself (REST and Socket.IO), so that server must be reachable from the browser at
the URL the widget is given. Needs the ``notebook`` extra (anywidget).
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anywidget
import traitlets

from .cli import NoDelayRequestHandler
from .client import Client, JobHandle
from .config import Config, origin_list

VIEWS = ("job", "compare")
WIDGET_MODULE = Path("assets") / "widget.js"


@cache
def widget_module(web_dist: Path | None = None) -> str:
    """The widget's front end (``widget.js`` in the built web folder) as text; ``FileNotFoundError`` saying how to
    build it when it is missing."""
    path = (web_dist or Config(ensure_default_model=False).web_dist) / WIDGET_MODULE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: build the front end (cd web && npm ci && npm run build)")
    return path.read_text(encoding="utf-8")


class ConvlensWidget(anywidget.AnyWidget):
    """``<convlens-job-view>`` (``view="job"``) or ``<convlens-compare>`` (``view="compare"``) in a cell's output;
    the element is remade whenever a trait changes."""

    view = traitlets.Unicode("job").tag(sync=True)
    server = traitlets.Unicode("").tag(sync=True)
    """The server's URL as the browser showing the notebook reaches it."""
    token = traitlets.Unicode("").tag(sync=True)
    job = traitlets.Unicode("").tag(sync=True)
    model = traitlets.Unicode("").tag(sync=True)
    model_b = traitlets.Unicode("").tag(sync=True)
    image = traitlets.Unicode("").tag(sync=True)
    target = traitlets.Unicode("").tag(sync=True)
    methods = traitlets.Unicode("").tag(sync=True)
    """Comma-separated method names."""
    autorun = traitlets.Bool(False).tag(sync=True)

    def __init__(self, **traits: Any) -> None:
        self._esm = widget_module()  # read here, not at import: `import convlens.notebook` works unbuilt
        super().__init__(**traits)

    @traitlets.validate("view")
    def _known_view(self, proposal: dict[str, Any]) -> str:
        if proposal["value"] not in VIEWS:
            raise traitlets.TraitError(f"view: expected one of {list(VIEWS)}, got {proposal['value']!r}")
        return proposal["value"]


class _QuietRequestHandler(NoDelayRequestHandler):
    """No request log: the kernel would print it into whichever cell ran last."""

    def log_request(self, *args: Any) -> None:
        pass


class _Embedded:
    """The one server :func:`serve` started in this process."""

    lock = threading.Lock()
    client: Client | None = None
    server: Any = None


def serve(
    port: int = 0, host: str = "127.0.0.1", config: Config | None = None, origins: Iterable[str] = ()
) -> Client:
    """Start convlens' server in a daemon thread of this process (on a free port with ``port=0``) → a
    :class:`~convlens.client.Client` to it. Idempotent: a later call returns the same client, whatever its
    arguments.

    Pages of ``origins`` and of the Jupyter servers running for this user may start and control jobs (their
    notebooks' widgets do); any other page only watches (``CONVLENS_CORS_ORIGINS``, :mod:`convlens.auth`).
    """
    with _Embedded.lock:
        if _Embedded.client is not None:
            return _Embedded.client
        from werkzeug.serving import make_server

        from .app import create_app
        from .auth import access_at_start

        config = config or Config()
        # A BadInput naming the token on an address other machines reach, as `convlens serve` refuses it.
        access_at_start(host, config.token, config.allow_no_token)
        listed = [*origin_list(config.cors_origins), *origins, *jupyter_origins()]
        config = dataclasses.replace(config, cors_origins=listed)
        app = create_app(config)
        server = make_server(host, port, app, threaded=True, request_handler=_QuietRequestHandler)
        threading.Thread(target=server.serve_forever, name="convlens-server", daemon=True).start()
        url_host = f"[{host}]" if ":" in host else host
        _Embedded.server = server
        _Embedded.client = Client(f"http://{url_host}:{server.server_port}", token=config.token)
        return _Embedded.client


def jupyter_origins() -> list[str]:
    """The origins of the Jupyter servers running for this user (their ``jpserver-*.json`` files), a loopback
    one under both ``localhost`` and ``127.0.0.1``: the pages whose widgets may start and control jobs."""
    try:
        from jupyter_core.paths import jupyter_runtime_dir
    except ImportError:
        return []
    found: list[str] = []
    for path in sorted(Path(jupyter_runtime_dir()).glob("jpserver-*.json")):
        try:
            url = urlsplit(str(json.loads(path.read_text(encoding="utf-8"))["url"]))
            port = url.port
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a file being written, or not a server's
        hosts = [url.hostname or ""]
        if hosts[0] in ("localhost", "127.0.0.1", "0.0.0.0", "::", "::1"):
            hosts = ["localhost", "127.0.0.1"]
        found += [f"{url.scheme}://{name}" + (f":{port}" if port else "") for name in hosts]
    return list(dict.fromkeys(found))


def _client(server: Client | str | None, token: str | None) -> Client:
    if server is None:
        return serve()
    if isinstance(server, Client):
        return server
    if isinstance(server, str):
        return Client(server, token=token)
    raise TypeError(f"server: expected a convlens.client.Client, a URL or None, got {type(server).__name__}")


def _widget(client: Client, browser_url: str | None, **traits: Any) -> ConvlensWidget:
    if browser_url is not None and not isinstance(browser_url, str):
        raise TypeError(f"browser_url: expected a URL, got {type(browser_url).__name__}")
    return ConvlensWidget(server=(browser_url or client.url).rstrip("/"), token=client.token or "", **traits)


def show(
    job: JobHandle | str,
    server: Client | str | None = None,
    token: str | None = None,
    browser_url: str | None = None,
) -> ConvlensWidget:
    """The live view of ``job`` (a :class:`~convlens.client.JobHandle`, or a job's id on ``server``: a Client, a
    URL, or ``None`` for :func:`serve`'s). ``browser_url``: the server as the notebook's browser reaches it,
    where that differs from the kernel's URL (a proxy, Colab)."""
    if isinstance(job, JobHandle):
        client = job.client if server is None else _client(server, token)
        job_id = job.id
    elif isinstance(job, str) and job.strip():
        client = _client(server, token)
        job_id = job.strip()
    else:
        raise TypeError(f"job: expected a convlens.client.JobHandle or a job id, got {type(job).__name__}")
    # A job the server does not know is a ClientError (404) naming job, here, rather than a blank view.
    client.job(job_id)
    return _widget(client, browser_url, view="job", job=job_id)


def compare(
    model: str | None = None,
    image: str | None = None,
    methods: Iterable[str] | None = None,
    target: int | None = None,
    model_b: str | None = None,
    autorun: bool = False,
    server: Client | str | None = None,
    token: str | None = None,
    browser_url: str | None = None,
) -> ConvlensWidget:
    """The comparison view: ``image`` through each of ``methods`` (names; every attribution method when
    ``None``) for class ``target`` (the top class when ``None``), on ``model`` and, beside it, ``model_b``;
    ``autorun`` starts the jobs at once."""
    if isinstance(methods, str):
        raise TypeError("methods: expected a list of method names, not one string")
    names = [] if methods is None else list(methods)
    if not all(isinstance(name, str) and name for name in names):
        raise TypeError(f"methods: expected method names, got {names!r}")
    if target is not None and (isinstance(target, bool) or not isinstance(target, int) or target < 0):
        raise ValueError(f"target: expected a class index (an int ≥ 0), got {target!r}")
    for field, value in (("model", model), ("model_b", model_b), ("image", image)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{field}: expected a string id, got {type(value).__name__}")
    return _widget(
        _client(server, token),
        browser_url,
        view="compare",
        model=model or "",
        model_b=model_b or "",
        image=image or "",
        methods=",".join(names),
        target="" if target is None else str(target),
        autorun=bool(autorun),
    )


__all__ = ["ConvlensWidget", "compare", "jupyter_origins", "serve", "show", "widget_module"]
