"""Who owns each uploaded picture and under which name: a JSON file beside each upload's PNG
(``upload-<hash>.json``: ``{"owners": {client id: {"name", "added"}}}``).

An upload is kept by content, so two clients sending the same picture share one PNG and each owns it under the
name it gave; the PNG goes when its last owner deletes it.
"""

from __future__ import annotations

import json
import re
import time
import unicodedata
from pathlib import Path

MAX_NAME = 100
"""The most characters of a file name kept as an upload's title."""


def upload_name(filename: str | None, fallback: str) -> str:
    """A file name as given at upload made fit to show: its last path part, NFKC-normalised, without control,
    format (bidi overrides), private-use or unassigned characters, spaces collapsed, at most ``MAX_NAME``
    characters; ``fallback`` when nothing is left."""
    name = unicodedata.normalize("NFKC", filename or "")
    name = re.split(r"[/\\]", name)[-1]
    kept = (
        " " if char.isspace() else char
        for char in name
        if char.isspace() or unicodedata.category(char)[0] != "C"
    )
    name = " ".join("".join(kept).split())
    if len(name) > MAX_NAME:
        name = name[: MAX_NAME - 1].rstrip() + "…"
    return name or fallback


class UploadOwners:
    """The owners' records of the uploads in ``folder``. Callers hold one lock around changes."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _path(self, image_id: str) -> Path:
        return self.folder / f"{image_id}.json"

    def owners(self, image_id: str) -> dict[str, dict]:
        """Client id → ``{"name", "added"}``; empty for an upload nobody owns (one from before owners were kept)."""
        try:
            owners = json.loads(self._path(image_id).read_text()).get("owners", {})
        except (OSError, ValueError, AttributeError):
            return {}
        return owners if isinstance(owners, dict) else {}

    def add(self, image_id: str, owner: str, name: str) -> None:
        """``owner`` owns ``image_id`` as ``name`` (a second upload of the same picture renames it)."""
        owners = self.owners(image_id)
        owners[owner] = {"name": name, "added": time.time()}
        self._write(image_id, owners)

    def remove(self, image_id: str, owner: str) -> dict[str, dict]:
        """``owner`` no longer owns ``image_id``; returns the owners left (the record goes with the last)."""
        owners = self.owners(image_id)
        owners.pop(owner, None)
        if owners:
            self._write(image_id, owners)
        else:
            self._path(image_id).unlink(missing_ok=True)
        return owners

    def owned_by(self, owner: str) -> list[tuple[str, str]]:
        """``(image id, name)`` of the uploads ``owner`` owns, the first uploaded first."""
        owned = []
        for path in self.folder.glob("upload-*.json"):
            entry = self.owners(path.stem).get(owner)
            if isinstance(entry, dict) and (self.folder / f"{path.stem}.png").is_file():
                owned.append((entry.get("added", 0), path.stem, str(entry.get("name") or path.stem)))
        return [(image_id, name) for _, image_id, name in sorted(owned)]

    def _write(self, image_id: str, owners: dict[str, dict]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(image_id)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"owners": owners}, ensure_ascii=False))
        tmp.replace(path)
