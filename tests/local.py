"""Plain helpers the test modules import (``conftest`` is ambiguous: tests/ and tests/browser/ each have one)."""

from __future__ import annotations

import socket
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FORWARD_ONLY = "forward-only"
"""The id under which the ``forward_only_model`` fixture offers the tiny model without gradients."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
