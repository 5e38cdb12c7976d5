"""Built-in topic "Networks trained live": demonstrations that train their own network inside the job and stream
its learning (Roadmap §5)."""

from __future__ import annotations

from convlens import hookimpl
from convlens.methods import Method


@hookimpl
def register_methods() -> list[Method]:
    return []
