"""Server and CLI settings, from arguments or ``CONVLENS_*`` environment variables.

convlens keeps its own files (the default model, results, uploads) in its home: in a source checkout the checkout
(``models/``, ``var/``); installed, a per-user data folder (``platformdirs.user_data_dir("convlens")``:
``models/``, ``results/``, ``uploads/``); ``CONVLENS_HOME`` names another. A folder a user names to find models
in is only read, never written to.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .dataset_zip import MAX_MEMBERS, MAX_UNPACKED_BYTES, MAX_ZIP_BYTES
from .errors import BadInput
from .images import MAX_PIXELS, MAX_UPLOAD_BYTES
from .streaming import STREAM_BUDGET, STREAM_HZ

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parents[1]
"""The checkout convlens runs from (``server/convlens`` is two levels down), when it runs from one."""
IN_CHECKOUT = PACKAGE_DIR.parent.name == "server" and (REPO_ROOT / "pyproject.toml").is_file()
"""Whether convlens runs from a source checkout (``make run``, an editable install) rather than an installed wheel."""
TRAINED_FOLDER = "trained"
"""The folder of ``data_dir`` that the networks jobs trained are written into (``Config.trained_dir``)."""


def home() -> Path:
    """convlens' own folder: ``CONVLENS_HOME``, else the checkout, else the per-user data folder."""
    value = os.environ.get("CONVLENS_HOME")
    if value:
        return Path(value)
    if IN_CHECKOUT:
        return REPO_ROOT
    import platformdirs

    return Path(platformdirs.user_data_dir("convlens", appauthor=False))


def _user_models_dirs() -> list[Path]:
    value = os.environ.get("CONVLENS_MODELS_DIRS")
    return [Path(part) for part in value.split(os.pathsep) if part] if value else []


def _user_datasets_dirs() -> list[Path]:
    value = os.environ.get("CONVLENS_DATASETS_DIRS")
    return [Path(part) for part in value.split(os.pathsep) if part] if value else []


def _default_data_dir() -> Path:
    value = os.environ.get("CONVLENS_DATA_DIR")
    if value:
        return Path(value)
    # A checkout keeps its results beside its models in the ignored var/; elsewhere they are the home's.
    return REPO_ROOT / "var" if home() == REPO_ROOT else home()


def _default_web_dist() -> Path:
    value = os.environ.get("CONVLENS_WEB_DIST")
    if value:
        return Path(value)
    installed = PACKAGE_DIR / "web_dist"
    return installed if installed.is_dir() else REPO_ROOT / "web" / "dist"


def parse_origins(value: str) -> list[str]:
    """A comma-separated list of origins (``https://lab.example``); ``*`` in it lets any page read and embed."""
    return [origin.strip().rstrip("/") for origin in value.split(",") if origin.strip()]


def origin_list(origins: str | list[str]) -> list[str]:
    """``Config.cors_origins`` as a list, also when given as the variable's comma-separated text."""
    return parse_origins(origins) if isinstance(origins, str) else list(origins)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def _env_number(name: str, default: float, kind: type = float, minimum: float | None = None):
    """A ``default_factory`` reading the number ``name`` from the environment when a ``Config`` is made; one that
    is not a number (or is below ``minimum``) is ``BadInput`` naming the variable (the CLI prints it, exits 2)."""

    def read():
        value = os.environ.get(name)
        if value is None:
            return kind(default)
        expected = "a whole number" if kind is int else "a number"
        if minimum is not None:
            expected += f" of at least {minimum:g}"
        try:
            number = kind(value)
        except ValueError:
            raise BadInput(name, f"expected {expected}, got {value!r}") from None
        if minimum is not None and number < minimum:
            raise BadInput(name, f"expected {expected}, got {value!r}")
        return number

    return field(default_factory=read)


@dataclass
class Config:
    models_dirs: list[Path] = field(default_factory=_user_models_dirs)
    """The user's folders of model files (``--models-dir``, ``CONVLENS_MODELS_DIRS``), searched after
    ``default_models_dir`` and never written to."""
    default_models_dir: Path | None = field(default_factory=lambda: home() / "models")
    """convlens' own folder of models, where the default model is written on first use; ``None``: none."""
    datasets_dirs: list[Path] = field(default_factory=lambda: [home() / "datasets", *_user_datasets_dirs()])
    """Folders whose sub-folders are data sets (``datasets/`` beside convlens' ``models/``, ``--datasets-dir``,
    ``CONVLENS_DATASETS_DIRS``); only read."""
    data_dir: Path = field(default_factory=_default_data_dir)
    jobs_db_path: Path | None = field(default_factory=lambda: _env_path("CONVLENS_JOBS_DB"))
    """The SQLite file of job records (``CONVLENS_JOBS_DB``); ``None``: ``jobs.sqlite3`` in ``data_dir``."""
    redis_url: str | None = field(default_factory=lambda: os.environ.get("CONVLENS_REDIS_URL") or None)
    """``CONVLENS_REDIS_URL`` (``redis://host:port/db``, ``?prefix=name:`` for a key prefix of its own): job records
    go to that Redis, shared by every web process given it (:mod:`convlens.redis_store`), instead of SQLite."""
    job_queue: str = field(
        default_factory=lambda: (os.environ.get("CONVLENS_JOB_QUEUE") or "").strip().lower()
    )
    """``CONVLENS_JOB_QUEUE``: ``""`` runs jobs in this process; ``rq`` hands them to ``convlens worker`` processes
    over RQ on ``CONVLENS_REDIS_URL`` (:mod:`convlens.worker_queue`)."""
    keep_results_days: float = _env_number("CONVLENS_KEEP_RESULTS_DAYS", 0)
    """Runs that ended longer ago than this many days lose their record and results folder (at start-up and
    hourly); 0 keeps every run."""
    keep_runs: int = _env_number("CONVLENS_KEEP_RUNS", 0, int, minimum=0)
    """Ended runs kept, at most (of all clients); past it the oldest lose record and results folder, when a run
    ends and at start-up (:mod:`convlens.gallery`). 0: no limit."""
    keep_results_bytes: int = _env_number("CONVLENS_KEEP_RESULTS_BYTES", 0, int, minimum=0)
    """Bytes of results folders kept, at most; past it the oldest ended runs go, as for ``keep_runs``. 0: no
    limit."""
    web_dist: Path = field(default_factory=_default_web_dist)
    max_upload_bytes: int = _env_number("CONVLENS_MAX_UPLOAD_BYTES", MAX_UPLOAD_BYTES, int)
    max_pixels: int = _env_number("CONVLENS_MAX_PIXELS", MAX_PIXELS, int)
    max_dataset_zip_bytes: int = _env_number("CONVLENS_MAX_DATASET_ZIP_BYTES", MAX_ZIP_BYTES, int)
    max_dataset_members: int = _env_number("CONVLENS_MAX_DATASET_MEMBERS", MAX_MEMBERS, int)
    max_dataset_unpacked_bytes: int = _env_number(
        "CONVLENS_MAX_DATASET_UNPACKED_BYTES", MAX_UNPACKED_BYTES, int
    )
    max_running_jobs: int = _env_number("CONVLENS_MAX_RUNNING_JOBS", 2, int)
    max_queued_jobs: int = _env_number("CONVLENS_MAX_QUEUED_JOBS", 100, int)
    """Jobs of all clients waiting for a slot (queued or paused), at most; one more is a 429. 0: no limit."""
    max_queued_per_client: int = _env_number("CONVLENS_MAX_QUEUED_PER_CLIENT", 20, int)
    """Jobs of one client waiting for a slot (queued or paused), at most; one more is a 429. 0: no limit."""
    max_run_seconds: float = _env_number("CONVLENS_MAX_RUN_SECONDS", 3600)
    """Seconds a job may run, paused time not counted, before it fails naming the limit. 0: no limit."""
    jpeg_quality: int = 85
    stream_hz: float = _env_number("CONVLENS_STREAM_HZ", STREAM_HZ)
    """Sends per second of a running job's newest frame, progress and metrics, at most; 0: one per event."""
    stream_budget: float = _env_number("CONVLENS_STREAM_BUDGET", STREAM_BUDGET)
    """The share of a running job's time its sends may take; fewer sends where they cost more. 0: no limit."""
    ensure_default_model: bool = True
    cors_origins: list[str] = field(
        default_factory=lambda: parse_origins(os.environ.get("CONVLENS_CORS_ORIGINS", "*"))
    )
    """Origins besides the server's own whose pages may read the API and frame its views (``*``: any); a listed
    origin (not ``*``) may also change state: start, stop, upload, delete."""
    token: str | None = field(default_factory=lambda: os.environ.get("CONVLENS_TOKEN") or None)
    """When set, every ``/api`` request and Socket.IO connection must carry it (:mod:`convlens.auth`)."""
    allow_no_token: bool = field(default_factory=lambda: _env_flag("CONVLENS_ALLOW_NO_TOKEN"))
    """``convlens serve`` on a non-loopback address without a token starts only with this (``--no-token``)."""
    image_cache_bytes: int = _env_number("CONVLENS_IMAGE_CACHE_BYTES", 256 * 2**20, int)
    """The most bytes of decoded pictures and encoded thumbnails the image library keeps in memory."""

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "results"

    @property
    def trained_dir(self) -> Path:
        """convlens' own folder of the networks jobs trained (:mod:`convlens.trained`), read as a models folder."""
        return self.data_dir / TRAINED_FOLDER

    @property
    def jobs_db(self) -> Path:
        """The SQLite file of job records (:mod:`convlens.job_db`)."""
        return self.jobs_db_path or self.data_dir / "jobs.sqlite3"

    @property
    def features_dir(self) -> Path:
        """The feature store's folder (:mod:`convlens.features`): a data set's codes, computed once."""
        return self.data_dir / "features"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def dataset_uploads_dir(self) -> Path:
        """Where uploaded zips are unpacked, one folder each."""
        return self.data_dir / "uploads" / "datasets"
