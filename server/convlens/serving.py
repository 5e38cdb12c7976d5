"""The production server: gunicorn, one worker of 64 threads, for ``convlens serve`` and the Procfile alike.

The module-level names are gunicorn settings: the Procfile reads them with ``--config python:convlens.serving``
and :func:`serve` with the same call, so both run the same server. One worker, because jobs, their rooms and
frames live in its memory; gthread, because Flask-SocketIO's threading mode holds a thread per websocket
(simple-websocket), and a request never waits behind another's.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

worker_class = "gthread"
workers = 1
threads = 64
timeout = 300
"""Seconds the arbiter lets the worker go silent. gthread's main loop reports between requests whatever they
do, so this bounds the worker's start: importing torch and the plugins, and writing the default model once."""
graceful_timeout = 2
"""Seconds a SIGTERM waits for requests under way. An open websocket is one until then: it held the default
30 s."""
control_socket_disable = True
"""No ``gunicorn.ctl`` in the user's home: two servers of one user would share that one path."""
SETTINGS = (
    "worker_class",
    "workers",
    "threads",
    "timeout",
    "graceful_timeout",
    "control_socket_disable",
    "worker_exit",
)
"""The names above, as gunicorn reads them from this module."""


def on_starting(server: Any) -> None:
    """Under the Procfile (not ``convlens serve``, which checks with its ``--no-token`` first): refuse, as
    ``convlens serve`` does, an address other machines reach when no token is set (exit 2, naming the fix)."""
    from .auth import access_at_start
    from .config import Config
    from .errors import BadInput

    config = Config(ensure_default_model=False)
    for address in server.cfg.bind:
        host = address.rsplit(":", 1)[0] if not address.startswith("unix:") else "localhost"
        try:
            access = access_at_start(host, config.token, config.allow_no_token)
        except BadInput as error:
            print(f"convlens: error: {error.field}: {error.reason}", file=sys.stderr, flush=True)
            sys.exit(2)
        print(f"convlens: access: {access}", file=sys.stderr, flush=True)


def worker_exit(_server: Any, _worker: Any) -> None:
    """Leave at once once the worker has stopped serving (SIGTERM, SIGINT).

    Python's exit would join every thread first: a viewer's open websocket holds one, a job another, so the
    worker lived on until the arbiter killed it ``graceful_timeout`` later. Jobs under way are lost either way.
    """
    logging.shutdown()
    os._exit(0)


def serve(make_app: Callable[[], Any], host: str, port: int) -> None:
    """Serve the WSGI app ``make_app()`` builds, in the worker, on ``host:port`` until SIGTERM or SIGINT.

    The app is built in the worker, after the fork: torch's thread pools do not survive a fork.
    """
    from gunicorn.app.base import BaseApplication

    class EmbeddedGunicorn(BaseApplication):
        def load_config(self) -> None:
            for name in SETTINGS:
                self.cfg.set(name, globals()[name])
            self.cfg.set("bind", [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"])

        def load(self) -> Any:
            return make_app()

    EmbeddedGunicorn().run()
