"""Server and CLI settings, from arguments or ``CONVLENS_*`` environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BadInput
from .images import MAX_PIXELS, MAX_UPLOAD_BYTES
from .streaming import STREAM_BUDGET, STREAM_HZ

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The checkout convlens runs from (``server/convlens`` is two levels down)."""


def _default_models_dirs() -> list[Path]:
    value = os.environ.get("CONVLENS_MODELS_DIRS")
    if value:
        return [Path(part) for part in value.split(os.pathsep) if part]
    return [REPO_ROOT / "models"]


def _origins(value: str) -> str | list[str]:
    """``*`` or a comma-separated list of origins allowed to embed convlens views."""
    value = value.strip()
    return "*" if value == "*" else [origin.strip() for origin in value.split(",") if origin.strip()]


def _env_number(name: str, default: float, kind: type = float):
    """A ``default_factory`` reading the number ``name`` from the environment when a ``Config`` is made; one that
    is not a number is ``BadInput`` naming the variable (the CLI prints it and exits 2)."""

    def read():
        value = os.environ.get(name)
        if value is None:
            return kind(default)
        try:
            return kind(value)
        except ValueError:
            expected = "a whole number" if kind is int else "a number"
            raise BadInput(name, f"expected {expected}, got {value!r}") from None

    return field(default_factory=read)


@dataclass
class Config:
    models_dirs: list[Path] = field(default_factory=_default_models_dirs)
    data_dir: Path = field(
        default_factory=lambda: Path(os.environ.get("CONVLENS_DATA_DIR", REPO_ROOT / "var"))
    )
    web_dist: Path = field(
        default_factory=lambda: Path(os.environ.get("CONVLENS_WEB_DIST", REPO_ROOT / "web" / "dist"))
    )
    max_upload_bytes: int = _env_number("CONVLENS_MAX_UPLOAD_BYTES", MAX_UPLOAD_BYTES, int)
    max_pixels: int = _env_number("CONVLENS_MAX_PIXELS", MAX_PIXELS, int)
    max_running_jobs: int = _env_number("CONVLENS_MAX_RUNNING_JOBS", 2, int)
    jpeg_quality: int = 85
    stream_hz: float = _env_number("CONVLENS_STREAM_HZ", STREAM_HZ)
    """Sends per second of a running job's newest frame, progress and metrics, at most; 0: one per event."""
    stream_budget: float = _env_number("CONVLENS_STREAM_BUDGET", STREAM_BUDGET)
    """The share of a running job's time its sends may take; fewer sends where they cost more. 0: no limit."""
    ensure_default_model: bool = True
    cors_origins: str | list[str] = field(
        default_factory=lambda: _origins(os.environ.get("CONVLENS_CORS_ORIGINS", "*"))
    )

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "results"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"
