"""``convlens cluster``: Redis, web processes behind nginx, and workers, started and watched by one command.

Debian's ``redis-server`` (unless ``CONVLENS_REDIS_URL`` names one) keeps the job records, with an append-only
file in the data folder; N ``convlens serve`` processes on free loopback ports hand every job to M ``convlens
worker`` processes (``CONVLENS_JOB_QUEUE=rq``); nginx gives the web processes one address, its config made from
``convlens/nginx.conf`` (``server/convlens/nginx.conf`` in the checkout) (``ip_hash``: one client's Socket.IO long-polling requests all reach the process holding
its session). A process that exits is started again after a backoff; SIGINT or SIGTERM stops them all.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis
import requests

from .config import Config
from .errors import BadInput
from .runtime import cpu_threads, die_with_parent, proc_stat

MAX_PROCESSES = 16
NGINX_TEMPLATE = Path(__file__).with_name("nginx.conf")
STARTS_S = 300
"""A hang guard for a process to answer at start (a web process imports torch and the plugins)."""
STOPS_S = 10
"""Seconds a process is given to leave after SIGTERM (a worker: after a second one) before SIGKILL."""
BACKOFF_S = (1, 2, 5, 10, 30)
"""Waits before the 1st, 2nd, ... restart of a process that keeps exiting; one that ran ``STEADY_S`` starts over."""
STEADY_S = 60


def say(message: str) -> None:
    print(f"convlens cluster: {message}", file=sys.stderr, flush=True)


def check_count(name: str, count: int) -> int:
    if not 1 <= count <= MAX_PROCESSES:
        raise BadInput(name, f"must be between 1 and {MAX_PROCESSES}, not {count}")
    return count


def check_port_free(host: str, port: int) -> None:
    """``BadInput`` naming ``port`` if something listens on ``host:port`` (or it cannot be bound)."""
    if not 1 <= port <= 65535:
        raise BadInput("port", f"must be between 1 and 65535, not {port}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(
            socket.SOL_SOCKET, socket.SO_REUSEADDR, 1
        )  # as nginx binds: TIME_WAIT is no obstacle
        try:
            probe.bind((host, port))
        except OSError as error:
            raise BadInput("port", f"{host}:{port} is in use or cannot be bound ({error.strerror})") from None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def find_nginx() -> str | None:
    """nginx on the PATH, else Debian's ``/usr/sbin/nginx`` (not on a non-root user's PATH)."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def nginx_config(template: str, listen: str, web_ports: list[int], folder: Path) -> str:
    """The nginx config: ``template``'s ``{{listen}}``, ``{{servers}}`` and ``{{folder}}`` filled in."""
    servers = "\n".join(f"        server 127.0.0.1:{port} max_fails=0;" for port in web_ports)
    return (
        template.replace("{{listen}}", listen)
        .replace("{{servers}}", servers)
        .replace("{{folder}}", str(folder))
    )


def listen_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parent_ids() -> dict[int, int]:
    """Each process's parent's id, from /proc (empty where there is none)."""
    parents = {}
    for entry in Path("/proc").iterdir() if Path("/proc/self/stat").exists() else ():
        if entry.name.isdigit():
            fields = proc_stat(entry.name)
            if fields is not None:  # else it ended meanwhile
                parents[int(entry.name)] = int(fields[1])
    return parents


def process_tree(root: int, parents: dict[int, int] | None = None) -> list[int]:
    """``root`` and every process below it (``parents``: :func:`parent_ids`, read now if not given)."""
    parents = parent_ids() if parents is None else parents
    tree = [root]
    for pid in tree:
        tree.extend(child for child, parent in parents.items() if parent == pid)
    return tree


def _end_with_supervisor() -> None:
    """In a child, before its program: SIGTERM when the supervisor dies, even by SIGKILL."""
    die_with_parent(signal.SIGTERM)


@dataclass
class Child:
    """One supervised process; ``command(n)`` is its command line for its n-th start (0 first)."""

    name: str
    command: Callable[[int], list[str]]
    env: dict[str, str]
    log_path: Path
    stop_signals: tuple[int, ...] = (signal.SIGTERM,)
    process: subprocess.Popen | None = None
    starts: int = 0
    started_at: float = 0.0
    restart_at: float | None = None
    failures: int = 0
    descendants: set[int] = field(default_factory=set)

    def start(self) -> None:
        with open(self.log_path, "a") as log:
            # A session of its own: a Ctrl-C in the terminal reaches the supervisor only, which stops the
            # processes in order; and its process group outlives it, so what it leaves behind can be killed.
            self.process = subprocess.Popen(
                self.command(self.starts),
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_end_with_supervisor,  # the supervisor starts no threads, so a fork is safe
            )
        self.starts += 1
        self.started_at = time.monotonic()
        self.restart_at = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def kind(self) -> str:
        """``web`` for ``web2``: what it is, which says when it stops."""
        return self.name.rstrip("0123456789")

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def remember_descendants(self, parents: dict[int, int]) -> None:
        """The processes it started (gunicorn's worker, RQ's work horse): killed too if left behind."""
        if self.running():
            self.descendants |= set(process_tree(self.pid, parents)[1:])

    def kill_leftovers(self) -> None:
        """SIGKILL its process group and the descendants it was seen with, once it has exited."""
        for kill, target in [(os.killpg, self.pid)] + [(os.kill, pid) for pid in self.descendants]:
            try:
                kill(target, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.descendants.clear()


class Cluster:
    """The processes of one ``convlens cluster`` run, in start order; :meth:`supervise` until :meth:`stop`."""

    def __init__(
        self,
        config: Config,
        host: str,
        port: int,
        web_count: int,
        worker_count: int,
        device: str,
        convlens_options: list[str],
    ) -> None:
        self.host, self.port = host, port
        self.config = config
        self.logs = config.data_dir / "cluster-logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.children: list[Child] = []
        self.stopping = threading.Event()
        self.nginx_folder: Path | None = None
        base_env = {**os.environ, "CONVLENS_JOB_QUEUE": "rq", "PYTHONUNBUFFERED": "1"}
        self.redis_url = config.redis_url
        if self.redis_url is None:
            self.redis_port = free_port()
            self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
            self._add_redis(base_env)
        base_env["CONVLENS_REDIS_URL"] = self.redis_url
        convlens = [sys.executable, "-m", "convlens", *convlens_options]
        self.web_ports = [free_port() for _ in range(web_count)]
        for number, web_port in enumerate(self.web_ports, 1):
            serve = [*convlens, "serve", "--host", "127.0.0.1", "--port", str(web_port)]
            self._add(f"web{number}", lambda _start, serve=serve: serve, base_env)
        node = f"{socket.gethostname()}.{os.getpid()}"
        # The workers share the machine's cores: their OpenMP pools spinning against each other cost 20x.
        threads = max(1, cpu_threads() // worker_count) if device == "cpu" else cpu_threads()
        for number in range(1, worker_count + 1):

            def worker(start: int, number: int = number) -> list[str]:
                # A new name each start: RQ refuses a name whose killed holder has not yet expired.
                name = f"{node}.worker{number}" + (f".{start}" if start else "")
                return [*convlens, "worker", "--device", device, "--name", name, "--threads", str(threads)]

            # RQ's worker leaves on a first SIGTERM once its job ends; a second one kills the job's horse.
            self._add(f"worker{number}", worker, base_env, (signal.SIGTERM, signal.SIGTERM))
        self.nginx = find_nginx()
        if self.nginx is not None:
            self._add_nginx(base_env)

    def _add(
        self, name: str, command: Callable[[int], list[str]], env: dict[str, str], signals: tuple = ()
    ) -> None:
        self.children.append(
            Child(name, command, env, self.logs / f"{name}.log", signals or (signal.SIGTERM,))
        )

    def _add_redis(self, env: dict[str, str]) -> None:
        folder = self.config.data_dir / "redis"
        folder.mkdir(parents=True, exist_ok=True)
        command = [
            shutil.which("redis-server") or "/usr/bin/redis-server",
            "--port", str(self.redis_port), "--bind", "127.0.0.1", "--dir", str(folder),
            "--appendonly", "yes", "--save", "",
        ]  # fmt: skip
        self._add("redis", lambda _start: command, env)

    def _add_nginx(self, env: dict[str, str]) -> None:
        if not NGINX_TEMPLATE.is_file():
            raise BadInput("nginx", f"its config template {NGINX_TEMPLATE} is missing (a broken install)")
        self.nginx_folder = Path(tempfile.mkdtemp(prefix="convlens-nginx-"))
        # nginx started by root runs its worker as nobody, which must reach the temp folders inside.
        self.nginx_folder.chmod(0o711)
        config_path = self.nginx_folder / "nginx.conf"
        config_path.write_text(
            nginx_config(
                NGINX_TEMPLATE.read_text(),
                listen_address(self.host, self.port),
                self.web_ports,
                self.nginx_folder,
            )
        )
        command = [
            self.nginx, "-p", str(self.nginx_folder), "-c", str(config_path),
            "-e", str(self.nginx_folder / "error.log"),
        ]  # fmt: skip
        self._add("nginx", lambda _start: command, env)

    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        """Every process in order, each once the one before answers; ``RuntimeError`` if one exits."""
        for child in self.children:
            if self.stopping.is_set():
                return
            child.start()
            where = f" on 127.0.0.1:{self._port_of(child)}" if self._port_of(child) else ""
            say(f"started {child.name} (pid {child.pid}){where}, its log in {child.log_path}")
            self._wait_ready(child)

    def _port_of(self, child: Child) -> int | None:
        if child.name == "redis":
            return self.redis_port
        if child.name.startswith("web"):
            return self.web_ports[int(child.name[3:]) - 1]
        return None

    def _wait_ready(self, child: Child) -> None:
        deadline = time.monotonic() + STARTS_S
        while not self._ready(child):
            if not child.running():
                raise RuntimeError(f"{child.name} exited at start:\n{child.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{child.name} did not answer in {STARTS_S} s:\n{child.log_tail()}")
            if self.stopping.wait(0.2):
                return

    def _ready(self, child: Child) -> bool:
        try:
            if child.name == "redis":
                redis.Redis(port=self.redis_port, socket_connect_timeout=1).ping()
            elif child.name.startswith("web"):
                requests.get(f"http://127.0.0.1:{self._port_of(child)}/api/models", timeout=30)
            elif child.name == "nginx":
                # It writes its pid once it listens: a connection alone might reach another program's port.
                assert self.nginx_folder is not None
                if (self.nginx_folder / "nginx.pid").read_text().strip() != str(child.pid):
                    return False
                socket.create_connection((self.host, self.port), timeout=1).close()
            return True
        except (redis.ConnectionError, requests.RequestException, OSError):
            return False

    def supervise(self) -> None:
        """Start again, after a backoff, each process that exits, until :meth:`stop` is asked for."""
        while not self.stopping.wait(0.5):
            now, parents = time.monotonic(), parent_ids()
            for child in self.children:
                if child.running():
                    child.remember_descendants(parents)
                    continue
                if child.process is None:
                    continue
                if child.restart_at is None:
                    child.kill_leftovers()  # a web process's orphaned gunicorn worker holds its port
                    child.failures = 0 if now - child.started_at > STEADY_S else child.failures + 1
                    wait = BACKOFF_S[min(child.failures, len(BACKOFF_S) - 1)]
                    child.restart_at = now + wait
                    say(
                        f"{child.name} (pid {child.pid}) exited with {child.process.returncode}; "
                        f"starting it again in {wait} s"
                    )
                elif now >= child.restart_at:
                    child.start()
                    say(f"started {child.name} again (pid {child.pid})")

    def stop(self) -> None:
        """nginx first (no new requests), then the web processes, the workers, Redis last, each kind at
        once; SIGKILL after ``STOPS_S``, and to whatever they left behind."""
        self.stopping.set()
        parents = parent_ids()
        for child in self.children:
            child.remember_descendants(parents)
        for kind in ("nginx", "web", "worker", "redis"):
            group = [child for child in self.children if child.kind == kind and child.process is not None]
            signals = group[0].stop_signals if group else ()
            for number, signum in enumerate(signals):
                for child in group:
                    if child.running():
                        os.kill(child.pid, signum)
                deadline = time.monotonic() + (STOPS_S if number == len(signals) - 1 else 2)
                for child in group:
                    try:
                        child.process.wait(max(0.0, deadline - time.monotonic()))
                    except subprocess.TimeoutExpired:
                        pass
            for child in group:
                child.kill_leftovers()
                child.process.wait(STOPS_S)
                say(f"stopped {child.name}")
        if self.nginx_folder is not None:
            shutil.rmtree(self.nginx_folder, ignore_errors=True)


def run(
    config: Config,
    host: str,
    port: int,
    web_count: int,
    worker_count: int,
    device: str,
    convlens_options: list[str],
) -> int:
    """Start the cluster, supervise it until SIGINT or SIGTERM, then stop it; 0, or 1 if it could not start."""
    check_count("web", web_count)
    check_count("workers", worker_count)
    check_port_free(host, port)
    cluster = Cluster(config, host, port, web_count, worker_count, device, convlens_options)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: cluster.stopping.set())
    try:
        cluster.start()
        if not cluster.stopping.is_set():
            webs = ", ".join(f"http://127.0.0.1:{web_port}" for web_port in cluster.web_ports)
            if cluster.nginx is None:
                say(f"nginx not found (make nginx installs it): open one web process directly: {webs}")
            else:
                say(f"serving on {cluster.address()} (nginx in front of {webs}); Ctrl-C stops it")
            cluster.supervise()
        return 0
    except RuntimeError as error:
        say(f"error: {error}")
        return 1
    finally:
        cluster.stop()
