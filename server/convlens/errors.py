"""Errors that carry the name of the offending input, for 4xx answers and CLI messages."""

from __future__ import annotations


class BadInput(ValueError):
    """A user-supplied value is wrong; ``field`` names it (``params.steps``, ``model``, ``file``)."""

    status = 400

    def __init__(self, field: str, reason: str, status: int | None = None) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        if status is not None:
            self.status = status

    def to_json(self) -> dict[str, str]:
        return {"error": self.reason, "field": self.field}


class NotFound(BadInput):
    """A named thing (model, method, job, image, layer) does not exist."""

    status = 404


class TooLarge(BadInput):
    """An upload or parameter exceeds a configured cap."""

    status = 413
