"""A real ``redis-server`` on a free loopback port (never a fake): the ``redis_server`` fixture."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from local import free_port

STARTS_S = 30
"""Seconds redis-server is given to answer a PING: a hang guard, never reached when it works."""


class RedisServer:
    """Debian's ``redis-server`` without persistence on 127.0.0.1:``port``; stopped and started again at will."""

    def __init__(self, folder: Path, durable: bool = False) -> None:
        self.folder = folder
        self.durable = durable
        """Whether it keeps an append-only file, so that its keys outlive a restart (as a deployment's should)."""
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [
            shutil.which("redis-server") or "/usr/bin/redis-server",
            "--save", "", "--appendonly", "no", "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.folder),
        ]  # fmt: skip
        if self.durable:
            command[3:5] = ["--appendonly", "yes", "--appendfsync", "always"]
        log = open(self.folder / f"redis-{self.port}.log", "a")  # noqa: SIM115 (the process writes it)
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + STARTS_S
        while True:
            assert self.process.poll() is None, (self.folder / f"redis-{self.port}.log").read_text()
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not answer"
                time.sleep(0.05)
        client.close()

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(30)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server for the session, killed at its end (``make test`` installs it: ``make redis``)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.kill()
