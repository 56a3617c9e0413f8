"""`profiler`: run a worker, try the whole system locally, feed it files, read profiles."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import orjson
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from stream.interrupts import run_main
from stream.settings import Settings, refusals

if TYPE_CHECKING:
    import urllib.request

    from stream.worker import WorkerStats

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)
topics_app = typer.Typer(help="Manage the topics profiler reads and writes.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
# soft_wrap: a message is one line whatever the width (80 columns when not a terminal),
# so errors, summaries and log scrapers see whole lines. emoji: a value such as
# `h:abc:` is printed as it is, not as an emoji.
console = Console(stderr=True, soft_wrap=True, emoji=False)


def _error(message: str) -> None:
    """`error: message` on one line; what the message quotes is never read as markup."""
    console.print(f"[red]error:[/] {escape(message)}")


def _utf8(value: str | None) -> str | None:
    """A command-line value that is text: the shell may pass bytes that are not UTF-8."""
    if value is not None:
        try:
            value.encode()
        except UnicodeEncodeError:
            raise typer.BadParameter("is not valid UTF-8") from None
    return value


# A command-line argument read as text (`_utf8`).
Text = Annotated[str, typer.Argument(callback=_utf8)]


def load_settings(**overrides: object) -> Settings:
    """Settings from PROFILER_* variables; a bad value is a one-line message, not a traceback."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
    except ValidationError as exc:
        for line in refusals(exc):
            _error(line)
        raise typer.Exit(2) from None


T = TypeVar("T")
# Kafka counts a topic's partitions in a signed 32-bit field.
MAX_PARTITIONS = 2**31 - 1
MAX_REPLICAS = 2**15 - 1  # the protocol carries a replication factor as an int16
MAX_PORT = 65535


def _with_servers(
    settings: Settings, work: Coroutine[Any, Any, T], server: Literal["redis", "broker"]
) -> T:
    """Run `work`, which reaches `server`; a setting of that server it cannot even use
    (see `stream.preflight`), or a server it cannot reach, is one line naming the setting."""
    from aiokafka.errors import KafkaError
    from redis.exceptions import RedisClusterException, RedisError

    from stream.preflight import StartupError, broker_setting, check_settings, redis_setting

    try:
        check_settings(settings, redis=server == "redis", broker=server == "broker")
    except StartupError as exc:
        work.close()  # never started
        _error(str(exc))
        raise typer.Exit(2) from None
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # its refusals: the line below
    try:
        return run_main(work)
    except (RedisError, RedisClusterException) as exc:
        _error(f"Redis at {redis_setting(settings)}: {exc}")
    except KafkaError as exc:
        _error(f"the broker at {broker_setting(settings)}: {exc}")
    raise typer.Exit(2)


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)


@app.command()
def run(
    until_idle: Annotated[
        float | None,
        typer.Option(help="exit 0 once nothing new arrived for this many seconds"),
    ] = None,
    stats_json: Annotated[
        Path | None, typer.Option(help="write the run's totals and timing here as JSON")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Start a worker (configuration from PROFILER_* environment variables)."""
    _configure_logging(verbose)
    if until_idle is not None and not 0 <= until_idle < math.inf:  # nan compares false
        _error(f"--until-idle {until_idle}: seconds, 0 or more")
        raise typer.Exit(2)
    settings = load_settings()
    if stats_json is not None:
        _check_writable(stats_json, "--stats-json")  # now, not when the run is over
    from aiokafka.errors import KafkaError
    from redis.exceptions import RedisError

    from stream.preflight import StartupError, check_servers

    try:
        run_main(check_servers(settings))  # before the encoder and models load
    except StartupError as exc:
        _error(f"cannot start the worker: {exc}")
        raise typer.Exit(1) from None
    from profiling.snapshots import SnapshotRefusedError
    from stream.runner import run_worker

    try:
        stats = run_main(run_worker(settings, until_idle))
    except (StartupError, SnapshotRefusedError) as exc:
        _error(f"cannot start the worker: {exc}")
        raise typer.Exit(1) from None
    except (KafkaError, RedisError, OSError) as exc:  # after it started: it stopped on this
        _error(f"the worker stopped: {exc}")
        raise typer.Exit(1) from None
    rate = f", {stats.records / stats.busy_s:,.0f} records/s while busy" if stats.busy_s else ""
    console.print(
        f"consumed {stats.records} records: {stats.applied} applied, {stats.duplicates} "
        f"duplicates, {stats.dead_letters} dead-lettered{_the_rest(stats)}; "
        f"{stats.profiles_written} profile writes{rate}"
    )
    if stats_json is not None:
        try:
            stats_json.write_bytes(orjson.dumps(stats.summary(), option=orjson.OPT_INDENT_2))
        except OSError as exc:  # the folder went away during the run, the disk filled
            _error(f"--stats-json {stats_json}: {exc}")
            raise typer.Exit(1) from None


def _the_rest(stats: WorkerStats) -> str:
    """The records a run took that were neither applied, duplicates nor dead-lettered, by
    what became of them (those there were), so that the summary adds up to its records."""
    labels = sum(n for outcome, n in stats.labels.items() if outcome != "invalid")
    commands = sum(n for (_, outcome), n in stats.commands.items() if outcome != "dead_lettered")
    parts = {
        "replayed": stats.replayed,
        "suppressed": stats.suppressed,
        "forwarded": stats.forwarded,
        "fraud labels": labels,
        "profile commands": commands,
    }
    return "".join(f", {n} {what}" for what, n in parts.items() if n)


def _check_writable(path: Path, option: str) -> None:
    """One line and exit 2 unless `path` is a file that can be written in an existing folder."""
    folder = path.parent
    if path.is_dir():
        why = "is a folder"
    elif not folder.is_dir():
        why = f"no folder {folder}"
    elif not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        why = "not writable"
    else:
        return
    _error(f"{option} {path}: {why}")
    raise typer.Exit(2)


@app.command()
def profile(user_id: Text) -> None:
    """Print a user's stored profile as JSON."""
    settings = load_settings()
    from stream.lookup import read_profile_json

    body = _with_servers(
        settings,
        read_profile_json(settings.redis_url, user_id, cluster=settings.redis_cluster),
        "redis",
    )
    if body is None:
        console.print(f"no profile for user {user_id!r}", markup=False)
        raise typer.Exit(1)
    sys.stdout.write(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() + "\n")


@topics_app.command("create")
def topics_create(
    partitions: Annotated[
        int, typer.Option(min=1, max=MAX_PARTITIONS, help="partitions per topic")
    ] = 6,
    replication_factor: Annotated[
        int,
        typer.Option(
            min=1, max=MAX_REPLICAS, help="copies of each partition (a production cluster: 3)"
        ),
    ] = 1,
) -> None:
    """Create the six topics (existing ones are left as they are)."""
    settings = load_settings()
    from stream.devstack import DevStackError, create_topics, default_topics
    from stream.preflight import StartupError, broker_options

    topics = default_topics(settings, partitions)
    try:  # the options are needed before `_with_servers` could check them
        security = broker_options(settings)
    except StartupError as exc:  # a bootstrap address or a CA bundle it cannot use
        _error(str(exc))
        raise typer.Exit(2) from None
    try:
        work = create_topics(
            settings.kafka_bootstrap,
            topics,
            security=security,
            replication_factor=replication_factor,
        )
        _with_servers(settings, work, "broker")
    except DevStackError as exc:
        _error(str(exc))
        raise typer.Exit(2) from None
    for name, count in topics.items():
        console.print(f"{name}: {count} partitions")


@app.command()
def produce(  # noqa: PLR0917 - each option of the command is a parameter
    file: Annotated[Path, typer.Argument(help="JSON lines or CSV file; - reads standard input")],
    preset: Annotated[
        str | None, typer.Option(help="taobao, online-retail or amazon-reviews")
    ] = None,
    map_: Annotated[
        list[str] | None,
        typer.Option(
            "--map",
            help="FIELD=COLUMN: the CSV column or JSON key (a.b: key b of object a) "
            "that gives the event field, repeatable",
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="stop after sending this many events")
    ] = None,
    format_: Annotated[
        Literal["csv", "jsonl"] | None,
        typer.Option(
            "--format",
            help="csv or jsonl (default: from the file name; a preset's own: no other)",
        ),
    ] = None,
    ts_format: Annotated[
        str | None,
        typer.Option(
            help="strptime format of the time column, e.g. '%d/%m/%Y %H:%M' (default: ISO "
            "8601, epoch numbers, or slashed dates in the order the file shows; of the "
            "presets, online-retail's only)"
        ),
    ] = None,
    type_map: Annotated[
        list[str] | None,
        typer.Option(
            help="VALUE=TYPE: the file's value of the type column, as an event "
            "type (pv=view), repeatable; with --preset taobao, added to its own"
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="FIELD=VALUE given to every event (currency=GBP, "
            "type=view for a file without a type column), repeatable",
        ),
    ] = None,
    delimiter: Annotated[
        str | None,
        typer.Option(
            help="CSV cell delimiter, one character; \\t for a tab (default: a tab for "
            ".tsv, else ,)"
        ),
    ] = None,
    header: Annotated[
        bool | None,
        typer.Option(
            help="whether a CSV file's first line names its columns (default: it does; "
            "without: --map FIELD=N names the Nth column, from 1; a preset's own: no other)"
        ),
    ] = None,
) -> None:
    """Send events from a file to the events topic."""
    from stream.file_import import CsvOptions, parse_pairs
    from stream.producing import Produced, produce_file

    settings = load_settings()
    if delimiter == "\\t":  # what a shell passes for '\t': no shell turns it into a tab
        delimiter = "\t"
    if delimiter is not None and len(delimiter) != 1:
        _error(f"--delimiter takes one character (\\t for a tab), got {delimiter!r}")
        raise typer.Exit(2)
    try:
        mapping = parse_pairs(map_ or [], "--map")
        options = CsvOptions(
            ts_format=ts_format,
            type_map=parse_pairs(type_map or [], "--type-map"),
            constants=parse_pairs(set_ or [], "--set"),
            delimiter=delimiter,
            header=header,
            format=format_,
        )
    except ValueError as exc:
        _error(str(exc))
        raise typer.Exit(2) from None
    report = Produced(settings.topic_events)  # counted as acks come, so a Ctrl-C can tell it

    def sending() -> Coroutine[Any, Any, Produced]:
        return produce_file(
            settings, file, preset, mapping or None, limit=limit, options=options, produced=report
        )

    try:
        # A SIGTERM (a job stopped, a container stopped) too: by default it ended the
        # import at once, with no word of how far it got. While the event loop runs,
        # the signals stop the import there (`_stopped_on_signal`); before and after
        # it, as a Ctrl-C.
        with _stopped_like_ctrl_c() as signals:
            _with_servers(settings, _stopped_on_signal(sending, signals), "broker")
    except (OSError, ValueError) as exc:
        _error(str(exc))
        raise typer.Exit(2) from None
    except (KeyboardInterrupt, _Signalled):  # what went out stays out: a rerun needs to
        # know how far it got
        console.print(f"interrupted: {report.summary()}", markup=False)
        raise typer.Exit(128 + (signals[0] if signals else signal.SIGINT)) from None
    console.print(report.summary(), markup=False)
    if report.sent == 0 and report.report.rows:
        for reason, example in report.report.examples.items():
            console.print(f"  {reason}: {example}", markup=False)
        _error("no event was sent: every row was skipped (the first of each reason above)")
        raise typer.Exit(1)


@app.command()
def erase(user_id: Text) -> None:
    """Ask the workers to erase a user (GDPR): every key, a tombstone, no older events again."""
    _check_user_id(user_id, "USER_ID")
    _send_command({"command": "erase", "user_id": user_id}, f"an erase of {user_id!r}")


@app.command()
def merge(from_user_id: Text, user_id: Text) -> None:
    """Ask the workers to merge a user's profile (an anonymous id) into another's, then erase it."""
    _check_user_id(from_user_id, "FROM_USER_ID")
    _check_user_id(user_id, "USER_ID")
    if from_user_id == user_id:
        _error("a merge needs two different users")
        raise typer.Exit(2)
    body = {"command": "merge", "from_user_id": from_user_id, "user_id": user_id}
    _send_command(body, f"a merge of {from_user_id!r} into {user_id!r}")


def _check_user_id(user_id: str, name: str) -> None:
    """One plain line, and exit 2, for a user id no command may carry (the decoder's own
    words name a JSON path the user never wrote)."""
    from profiling.commands import MAX_USER_ID_CHARS

    if not user_id:
        why = "is empty: give a user id"
    elif len(user_id) > MAX_USER_ID_CHARS:
        why = f"has {len(user_id)} characters: a user id has at most {MAX_USER_ID_CHARS}"
    else:
        return
    _error(f"{name} {why}")
    raise typer.Exit(2)


def _send_command(body: dict[str, str], what: str) -> None:
    """One `profile-commands` record, keyed by its `user_id`, if the workers' decoder
    takes it (the contract)."""
    from profiling.commands import decode_command
    from profiling.events import Rejection

    settings = load_settings()
    value = orjson.dumps(body)
    verdict = decode_command(value)
    if isinstance(verdict, Rejection):
        _error(f"not a valid command: {verdict.detail}")
        raise typer.Exit(2)
    from stream.producing import send_records

    record = (body["user_id"].encode(), value)
    _with_servers(settings, send_records(settings, [record], settings.topic_commands), "broker")
    console.print(f"sent {what} to {settings.topic_commands}", markup=False)


@app.command("dev-stack")
def dev_stack(
    partitions: Annotated[
        int, typer.Option(min=1, max=MAX_PARTITIONS, help="partitions per topic")
    ] = 6,
) -> None:
    """Start a local broker and redis-server, print the PROFILER_* lines, wait for Ctrl-C."""
    from stream.devstack import DevStack, DevStackError

    settings = load_settings()
    try:
        with _stopped_like_ctrl_c(), DevStack(settings, partitions=partitions) as stack:
            failure = _wait_for_signal(lambda: _announce(stack.env_lines()), stack.watch)
    except DevStackError as exc:
        _error(f"the local stack cannot start: {exc}")
        raise typer.Exit(1) from None
    if failure is not None:  # a server exited: the other one is stopped on the way out
        _error(f"the local stack stopped: {failure}")
        raise typer.Exit(1)


def _announce(env_lines: list[str]) -> None:
    for line in env_lines:
        sys.stdout.write(f"export {line}\n")
    sys.stdout.flush()
    console.print("broker and redis-server running; Ctrl-C stops them")


@contextlib.contextmanager
def _stopped_like_ctrl_c() -> Iterator[list[int]]:
    """SIGTERM and SIGHUP (a closed terminal) act as Ctrl-C does, so the local servers
    are stopped and their directories removed on the way out; by default either
    signal ends Python at once and leaves the directories in /tmp. Yields the
    signals received so, in order, for an exit code that tells which one it was."""
    received: list[int] = []

    def interrupt(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        on_ctrl_c = signal.getsignal(signal.SIGINT)  # asyncio.run's own while a loop runs
        if not callable(on_ctrl_c):  # SIGINT ignored, as in a background job
            raise KeyboardInterrupt
        on_ctrl_c(signal.SIGINT, frame)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Signalled(Exception):
    """The work `_stopped_on_signal` ran was stopped by a signal."""


async def _stopped_on_signal(work: Callable[[], Awaitable[T]], received: list[int]) -> T:
    """Run `work()` with SIGINT (unless ignored, as in a background job), SIGTERM and SIGHUP
    handled on the event loop: each appended to `received` and cancelling `work`, which
    stops in order (a producer delivers what it holds as it closes; a second signal
    cancels that too), then `_Signalled`. From a plain signal handler, a signal raised
    KeyboardInterrupt wherever the loop was: a task step ended by it skipped its
    clean-up, and the loop could hang as asyncio.run closed it."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    handled = [signal.SIGTERM, signal.SIGHUP]
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        handled.append(signal.SIGINT)
    previous = {sig: signal.getsignal(sig) for sig in handled}

    def stop(sig: int) -> None:
        received.append(sig)
        task.cancel()

    for sig in handled:
        loop.add_signal_handler(sig, stop, sig)
    try:
        return await work()
    except asyncio.CancelledError:
        if received:
            raise _Signalled from None
        raise
    finally:
        for sig, handler in previous.items():
            loop.remove_signal_handler(sig)  # sets the default, not the one before
            if handler is not None:
                signal.signal(sig, handler)


def _wait_for_signal(
    announce: Callable[[], None], failed: Callable[[], Awaitable[str]]
) -> str | None:
    """Handle SIGINT/SIGTERM/SIGHUP, then `announce` (a script may signal us as soon as it
    reads that), then wait for one of them (None) or for `failed` to say what failed."""
    received = asyncio.Event()

    async def wait() -> str | None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, received.set)
        announce()
        signalled, failing = asyncio.ensure_future(received.wait()), asyncio.ensure_future(failed())
        await asyncio.wait([signalled, failing], return_when=asyncio.FIRST_COMPLETED)
        for task in (signalled, failing):
            task.cancel()
        return None if received.is_set() or not failing.done() else failing.result()

    return run_main(wait())


@app.command()
def demo(
    users: Annotated[int, typer.Option(min=1, help="shoppers in the synthetic shop")] = 5000,
    events: Annotated[int, typer.Option(min=1, help="events to stream")] = 100_000,
    seed: Annotated[int, typer.Option(min=0, help="seed of the synthetic shop")] = 7,
) -> None:
    """Start a local broker and Redis, stream a synthetic shop through a worker, summarise."""
    _configure_logging(False)
    logging.getLogger().setLevel(logging.WARNING)
    from profiling.errors import ProfilerError
    from stream.demo import QUICK_GROUPS, run_demo
    from stream.devstack import DevStackError

    settings = load_settings(**QUICK_GROUPS)
    try:
        with _stopped_like_ctrl_c():
            run_demo(
                settings,
                users=users,
                events=events,
                seed=seed,
                console=Console(),
                say_failed=lambda why: _error(f"the demo's local stack failed: {why}"),
            )
    except DevStackError as exc:  # the broker or redis-server did not come up, or exited
        _error(f"the demo's local stack failed: {exc}")
        raise typer.Exit(1) from None
    except ProfilerError as exc:  # the worker cannot be built: an encoder that cannot load
        _error(f"the demo's worker cannot start: {exc}")
        raise typer.Exit(1) from None


@app.command()
def status(
    url: Annotated[
        str | None,
        typer.Option(
            callback=_utf8, help="worker base URL (default: localhost and PROFILER_WEB_PORT)"
        ),
    ] = None,
) -> None:
    """Ask a running worker whether it is ready: broker, Redis, batches, partitions, lag."""
    import http.client
    import urllib.error
    import urllib.request

    base = _worker_url(url) if url else _local_worker_url()
    try:
        # The worker answers within about twice its checks' bound (READY_TIMEOUT_S).
        with _opener(base).open(f"{base}/ready", timeout=10) as reply:
            body, code = reply.read(), reply.status
    except urllib.error.HTTPError as exc:
        body, code = exc.read(), exc.code
    # HTTPException: no HTTP spoken; UnicodeError: a host name with an empty label.
    except (OSError, http.client.HTTPException, UnicodeError) as exc:
        console.print(f"[red]unreachable:[/] {escape(f'{base} ({exc})')}")
        raise typer.Exit(2) from None
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        _error(f"{base}/ready answered HTTP {code} without JSON: not a profiler worker")
        raise typer.Exit(2) from None
    sys.stdout.write(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode() + "\n")
    raise typer.Exit(0 if code == 200 else 1)


def _opener(base: str) -> urllib.request.OpenerDirector:
    """What asks `base`: directly when it is this machine, else as urllib would.

    urllib sends every request through the environment's HTTP proxy (`http_proxy`)
    unless `no_proxy` names the host, localhost included: the proxy then asked its
    own localhost, and `status` said unreachable, or no worker, of a ready worker.
    """
    import urllib.request
    from urllib.parse import urlsplit

    host = urlsplit(base).hostname or ""
    if host == "localhost" or _is_loopback(host):
        return urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener()


def _is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name, not an address
        return False


def _local_worker_url() -> str:
    """This machine's worker, on PROFILER_WEB_PORT; one line when that port is 0 (no web)."""
    port = load_settings().web_port
    if not port:
        _error("PROFILER_WEB_PORT is 0: a worker started so serves no /ready; pass --url")
        raise typer.Exit(2)
    return f"http://localhost:{port}"


def _worker_url(url: str) -> str:
    """`url` without a trailing slash, if it is an http(s) URL with a host and a port
    a server can listen on (or none); else one line."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
    except ValueError as exc:  # a bracket left open: "Invalid IPv6 URL"
        why = str(exc)
    else:
        port = _port_text(parts.netloc)
        if port == "":  # `host:`: urllib takes it for no port, the default one
            why = f"an empty port: a port is a number from 1 to {MAX_PORT} (or no colon)"
        elif port and not (port.isascii() and port.isdigit() and 0 < int(port) <= MAX_PORT):
            why = f"port {port}: a port is a number from 1 to {MAX_PORT}"
        elif parts.scheme in ("http", "https") and parts.hostname:
            return url.rstrip("/")
        else:
            why = "it takes http:// or https://, a host and an optional port"
    _error(f"--url {url}: not a worker URL ({why})")
    raise typer.Exit(2)


def _port_text(netloc: str) -> str | None:
    """The port of a URL's `host:port` as written (None when there is no colon; "" when
    nothing follows it), whatever it holds: urllib refused 0 nowhere, a port out of its
    range as "out of range 0-65535", and an empty one not at all."""
    host_port = netloc.rpartition("@")[2]
    if host_port.startswith("["):  # an IPv6 address, whose colons are not the port's
        host_port = host_port.partition("]")[2]
    return host_port.rpartition(":")[2] if ":" in host_port else None


@app.command()
def segments() -> None:
    """Print each segment's size and what its users are like, from the group's saved models."""
    from profiling.snapshots import SnapshotRefusedError
    from stream.model_setup import segment_report

    settings = load_settings()
    try:
        rows = _with_servers(settings, segment_report(settings), "redis")
    except (SnapshotRefusedError, OSError) as exc:
        _error(str(exc))
        raise typer.Exit(2) from None
    total = sum(size for _, size, _ in rows) or 1
    for segment, size, words in rows:
        users = "1 user" if size == 1 else f"{size} users"
        sys.stdout.write(f"segment {segment}\t{users}\t{100 * size / total:.1f} %\t{words}\n")


@app.command()
def config() -> None:
    """Print every setting, its environment variable, value and meaning."""
    from stream.preflight import redacted

    settings = load_settings()
    for name, info in Settings.model_fields.items():
        value = getattr(settings, name)
        if name == "redis_url":  # an ACL user's password masked, as the secrets are
            value = redacted(value)
        # Unset prints empty and a JSON setting prints JSON: the lines read back.
        shown = (
            ""
            if value is None
            else orjson.dumps(value).decode()
            if isinstance(value, dict)
            else str(value)
        )
        sys.stdout.write(f"PROFILER_{name.upper()}={shown}\t# {info.description}\n")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
