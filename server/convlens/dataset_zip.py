"""Uploaded data sets: a zip checked member by member, then unpacked only below convlens' uploads folder.

Refused (``BadInput`` naming ``file``, the member named in the reason): not a zip, a member whose name climbs out
(``../``), is absolute or has a drive letter, a symbolic link, too many members, or more bytes unpacked than the
cap (a zip bomb: 413). Sizes are checked from the archive's directory before anything is written, and counted
again while unpacking, since ``zipfile`` stops a member at the size its header declares.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import secrets
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import BadInput, TooLarge

MAX_ZIP_BYTES = 256 * 1024 * 1024
MAX_MEMBERS = 20_000
MAX_UNPACKED_BYTES = 2 * 1024 * 1024 * 1024
MAX_NAME_CHARS = 1024


@dataclass(frozen=True)
class ZipLimits:
    max_bytes: int = MAX_ZIP_BYTES
    max_members: int = MAX_MEMBERS
    max_unpacked_bytes: int = MAX_UNPACKED_BYTES


def _member_path(info: zipfile.ZipInfo) -> PurePosixPath | None:
    """The member's relative path, ``None`` for one to leave out (a folder, macOS' ``__MACOSX`` metadata), or
    ``BadInput`` naming it when it would land outside the folder or is a link."""
    name = info.filename
    if len(name) > MAX_NAME_CHARS or any(ord(ch) < 32 or ch == "\x7f" for ch in name):
        raise BadInput(
            "file", f"member {name[:80]!r}: a name with control characters or over {MAX_NAME_CHARS}"
        )
    mode = info.external_attr >> 16
    if info.create_system == 3 and stat.S_ISLNK(mode):  # 3: made on Unix, where the mode is meaningful
        raise BadInput("file", f"member {name!r}: a symbolic link; only plain files are unpacked")
    posix = name.replace("\\", "/")
    if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix):
        raise BadInput("file", f"member {name!r}: an absolute path")
    parts = [part for part in posix.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise BadInput("file", f"member {name!r}: a path that climbs out of the folder (..)")
    if info.is_dir() or not parts or parts[0] == "__MACOSX":
        return None
    return PurePosixPath(*parts)


def unpack_zip(data: bytes, uploads_dir: Path, stem: str, limits: ZipLimits = ZipLimits()) -> Path:
    """Check the zip ``data`` and unpack it as a new folder in ``uploads_dir``; the folder's path.

    The folder's name is ``stem`` made safe plus a digest of the content, so the same zip is one data set. A zip
    whose members all lie in one folder is unpacked from inside it, so ``cats/``, ``dogs/`` label the images.
    """
    if not data:
        raise BadInput("file", "the file is empty")
    if len(data) > limits.max_bytes:
        raise TooLarge("file", f"the zip is {len(data)} bytes; the limit is {limits.max_bytes}")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError):
        raise BadInput("file", "not a zip archive") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > limits.max_members:
            raise TooLarge("file", f"the zip has {len(infos)} members; the limit is {limits.max_members}")
        members = [(info, path) for info in infos if (path := _member_path(info)) is not None]
        unpacked = sum(info.file_size for info, _ in members)
        if unpacked > limits.max_unpacked_bytes:
            raise TooLarge(
                "file", f"the zip unpacks to {unpacked} bytes; the limit is {limits.max_unpacked_bytes}"
            )
        tops = {path.parts[0] for _, path in members}
        if len(tops) == 1 and all(len(path.parts) > 1 for _, path in members):
            members = [(info, PurePosixPath(*path.parts[1:])) for info, path in members]
        name = _safe_name(stem) + "-" + hashlib.sha256(data).hexdigest()[:10]
        final = uploads_dir / name
        if final.is_dir():
            return final
        uploads_dir.mkdir(parents=True, exist_ok=True)
        staging = uploads_dir / f".unpacking-{secrets.token_hex(6)}"
        staging.mkdir()
        try:
            _write_members(archive, members, staging, limits.max_unpacked_bytes)
            try:
                staging.rename(final)
            except OSError:
                if not final.is_dir():
                    raise
                shutil.rmtree(staging)  # the same zip, unpacked by a request beside this one
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return final


def _write_members(
    archive: zipfile.ZipFile, members: list[tuple[zipfile.ZipInfo, PurePosixPath]], root: Path, budget: int
) -> None:
    written = 0
    resolved_root = root.resolve()
    for info, path in members:
        target = root.joinpath(*path.parts)
        if not target.resolve().is_relative_to(resolved_root):  # defence in depth: _member_path refused these
            raise BadInput("file", f"member {info.filename!r}: a path outside the folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            # O_EXCL | O_NOFOLLOW: never through a link, never over a file an earlier member wrote.
            handle = os.open(
                target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644
            )
        except FileExistsError:
            raise BadInput("file", f"member {info.filename!r}: appears twice in the zip") from None
        except OSError as error:
            raise BadInput(
                "file", f"member {info.filename!r}: cannot be unpacked ({error.strerror})"
            ) from None
        with os.fdopen(handle, "wb") as out:
            try:
                with archive.open(info) as source:
                    while chunk := source.read(1 << 20):
                        written += len(chunk)
                        if written > budget:
                            raise TooLarge("file", f"the zip unpacks to more than {budget} bytes")
                        out.write(chunk)
            except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError, EOFError) as error:
                raise BadInput("file", f"member {info.filename!r}: cannot be read ({error})") from None


def _safe_name(stem: str) -> str:
    """``stem`` as an ASCII folder name: letters, digits, ``-`` and ``_``, at most 40; ``dataset`` if none."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-_")[:40]
    return cleaned or "dataset"
