"""The Flask application factory: REST API, Socket.IO, and the built web front end."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from flask import Flask, abort, redirect, request, send_from_directory
from flask_socketio import SocketIO

from . import auth, runner
from .config import Config, origin_list
from .dataset_zip import ZipLimits
from .datasets import DatasetLibrary
from .errors import BadInput
from .gallery import Retention
from .image_library import ImageLibrary
from .job_db import SqliteJobStore
from .jobs import JobManager
from .models.store import ModelStore
from .plugins import MethodRegistry, get_plugin_manager, registered_datasets, sample_images
from .streaming import FrameRelay

log = logging.getLogger(__name__)
PRUNE_EVERY_S = 3600


@dataclass
class Services:
    """What the API and socket handlers work with; one per app."""

    config: Config
    models: ModelStore
    methods: MethodRegistry
    images: ImageLibrary
    datasets: DatasetLibrary
    jobs: JobManager
    relay: FrameRelay
    socketio: SocketIO


def build_library(pm, config: Config) -> ImageLibrary:
    return ImageLibrary(
        sample_images(pm),
        config.uploads_dir,
        config.max_upload_bytes,
        config.max_pixels,
        results_dir=config.results_dir,
        cache_bytes=config.image_cache_bytes,
    )


def build_dataset_library(pm, config: Config) -> DatasetLibrary:
    limits = ZipLimits(
        config.max_dataset_zip_bytes, config.max_dataset_members, config.max_dataset_unpacked_bytes
    )
    return DatasetLibrary(registered_datasets(pm), config.datasets_dirs, config.dataset_uploads_dir, limits)


def build_sources(config: Config) -> tuple[ModelStore, MethodRegistry, ImageLibrary, DatasetLibrary]:
    """What jobs are made of: the models, methods, images and data sets, for a web process and a worker alike."""
    models = ModelStore([*config.models_dirs, config.trained_dir], default_dir=config.default_models_dir)
    if config.ensure_default_model:
        models.ensure_default(log=lambda message: log.warning(message))
    pm = get_plugin_manager()
    methods = MethodRegistry(pm)
    images = build_library(pm, config)
    datasets = build_dataset_library(pm, config)
    images.datasets = datasets  # so a data set's image can be a job's picture (dataset:<id>:<index>)
    return models, methods, images, datasets


def build_job_manager(config: Config, sources, sink, store, start_task, **overrides) -> JobManager:
    """The job manager of ``config`` over ``sources`` (:func:`build_sources`), its events to ``sink``."""
    models, methods, images, datasets = sources
    settings = {
        "max_running": config.max_running_jobs,
        "max_queued": config.max_queued_jobs,
        "max_queued_per_client": config.max_queued_per_client,
        **overrides,
    }
    return JobManager(
        get_model=models.get,
        get_method=methods.get,
        get_image=images.get,
        get_dataset=datasets.get,
        models=models,
        features=runner.feature_store(config.features_dir),
        sink=sink,
        start_task=start_task,
        results_dir=config.results_dir,
        store=store,
        max_run_seconds=config.max_run_seconds,
        jpeg_quality=config.jpeg_quality,
        stream_hz=config.stream_hz,
        stream_budget=config.stream_budget,
        **settings,
    )


def create_app(config: Config | None = None) -> Flask:
    """A convlens app; its SocketIO object is ``app.extensions["socketio"]``."""
    from . import api, sockets

    config = config or Config()
    app = Flask(__name__, static_folder=None)
    # The larger of the two uploads' caps; each endpoint checks its own.
    app.config["MAX_CONTENT_LENGTH"] = max(config.max_upload_bytes, config.max_dataset_zip_bytes) + 64 * 1024
    app.json.sort_keys = False
    socketio = SocketIO(
        app,
        async_mode="threading",
        # Each handler is short and never waits (see sockets.py): run it on its connection's own thread rather
        # than a new thread per event. A watching viewer acks up to 20 frames a second, and on a machine whose
        # cores all run a job's torch threads, every thread started takes time from the job's steps.
        # A viewer's events are then also handled in the order it sent them.
        async_handlers=False,
        cors_allowed_origins=auth.socket_origins(origin_list(config.cors_origins)),
        max_http_buffer_size=config.max_upload_bytes,
    )

    models, methods, images, datasets = build_sources(config)
    relay = FrameRelay(lambda sid, message: socketio.emit("frame", message, to=sid))
    store = job_store(config)
    sink = sockets.RoomEvents(socketio, relay)
    jobs = build_job_manager(
        config, (models, methods, images, datasets), sink, store, socketio.start_background_task
    )
    if config.job_queue:
        _hand_jobs_to_workers(socketio, jobs, store, sink, config)
    _keep_runs(jobs, config, socketio.start_background_task)
    # So that job:<id>:<name> of a job still running is a 409 that says so, not an unknown job's 404.
    images.job_state = lambda job_id: getattr(jobs.store.get(job_id), "state", None)
    app.extensions["convlens"] = Services(config, models, methods, images, datasets, jobs, relay, socketio)
    app.register_blueprint(api.blueprint)
    sockets.register(socketio, app.extensions["convlens"])
    _serve_web(app, config.web_dist)
    _allow_embedding(app, config)
    return app


def _hand_jobs_to_workers(socketio: SocketIO, jobs: JobManager, store, sink, config: Config) -> None:
    """Jobs go to ``convlens worker`` processes over RQ; their events come back on the bus (:mod:`convlens.bus`)."""
    import threading

    from .bus import BusManager, Follower, channel_of
    from .worker_queue import WorkerQueue

    if not config.redis_url:
        raise BadInput("CONVLENS_JOB_QUEUE", "workers need a Redis: set CONVLENS_REDIS_URL too")
    follower = Follower(jobs.store, sink, config.jpeg_quality)
    bus = BusManager(store.url, channel_of(store.prefix), follower.apply)
    socketio.server.manager = bus  # before any client connects: the server's own manager is not yet used
    bus.set_server(socketio.server)
    bus.initialize()  # now, not at the first connection: the mirrors are kept whether or not anyone watches
    socketio.server.manager_initialized = True
    jobs.workers = WorkerQueue(
        store,
        bus.publish,
        socketio.start_background_task,
        max_queued=config.max_queued_jobs,
        max_queued_per_client=config.max_queued_per_client,
        max_run_seconds=config.max_run_seconds,
    )
    jobs.workers.manager = jobs
    socketio.start_background_task(follower.keep_reconciling, threading.Event())


def job_store(config: Config):
    """SQLite in the data folder; Redis, shared with other web processes, when ``CONVLENS_REDIS_URL`` is set."""
    if not config.redis_url:
        return SqliteJobStore(config.jobs_db)
    from .redis_store import shared_store  # redis-py is the cluster extra's: the default install has none

    return shared_store(config.redis_url)


def _allow_embedding(app: Flask, config: Config) -> None:
    """Let other sites load the custom elements' script, read the API and frame the views; only the server's
    own pages and the listed origins change state (:mod:`convlens.auth`), and with a token, only holders."""
    auth.install(app, origin_list(config.cors_origins), config.token)


def _keep_runs(jobs: JobManager, config: Config, start_task) -> None:
    """Fail the runs the last process left unfinished; keep ``keep_runs`` and ``keep_results_bytes`` now and as
    each run ends (:class:`convlens.gallery.Retention`); with ``keep_results_days``, prune older runs now and
    hourly."""
    lost = jobs.recover()
    if lost:
        log.warning("%d job(s) were lost when the server last stopped: marked failed", len(lost))
    retention = Retention(config.keep_runs, config.keep_results_bytes)
    if retention.keep_runs or retention.keep_bytes:
        retention.apply(jobs)
        jobs.after_end = lambda _job: retention.apply(jobs)
    keep_days = config.keep_results_days
    if keep_days <= 0:
        return

    def prune() -> None:
        pruned = jobs.prune(time.time() - keep_days * 86400)
        if pruned:
            log.info("pruned %d run(s) older than %g days", len(pruned), keep_days)

    def prune_hourly() -> None:
        while True:
            time.sleep(PRUNE_EVERY_S)
            try:
                prune()
            except Exception:  # a locked file or a full disk today must not end the pruning for good
                log.exception("pruning old runs failed")

    prune()
    start_task(prune_hourly)


def _serve_web(app: Flask, dist: Path) -> None:
    # The API reference page (web/api.html) at the address people try first. Answered before the token
    # check (auth.install comes later): the page is public as every page is, and asks for the token itself.
    @app.before_request
    def api_docs():
        if request.path in ("/api/docs", "/api/docs/") and request.method in ("GET", "HEAD"):
            query = request.query_string.decode("latin-1")
            return redirect("/api.html" + (f"?{query}" if query else ""))
        return None

    @app.get("/")
    def index():
        if not (dist / "index.html").is_file():
            return (
                "<h1>convlens</h1><p>The web front end is not built: run <code>make web</code>"
                f" (looked in {dist}). The API is at <a href='/api/models'>/api/models</a>.</p>",
                503,
            )
        return send_from_directory(dist, "index.html")

    @app.get("/<path:filename>")
    def web_file(filename: str):
        if filename.startswith("api/") or not (dist / filename).is_file():
            abort(404)
        return send_from_directory(dist, filename)
