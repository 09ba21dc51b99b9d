"""collab: a collaborative text-editing server for Yjs clients. Serve documents, list, export,
import and delete them, manage the store, load-test any y-websocket server."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import gc
import logging
import re
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

from collab import __version__
from collab.config import Settings, argument_type, boolean, redact_url

if TYPE_CHECKING:
    from collab.store import Store

T = TypeVar("T")
log = logging.getLogger("collab")


def _add_settings_arguments(parser: argparse.ArgumentParser, only: set[str] | None = None) -> None:
    for name, option, default in Settings.options():
        if only is not None and name not in only:
            continue
        flag = "--" + name.replace("_", "-")
        shown = default if not callable(default) else None
        # A boolean flag alone means true (--single-instance); it also takes a value.
        alone: dict[str, Any] = {"nargs": "?", "const": True} if option.parse is boolean else {}
        if option.repeat:
            alone = {"action": "append"}
        parser.add_argument(flag, dest=name, default=None, metavar=option.metavar,
                            type=argument_type(option.parse), **alone,
                            help=f"{option.help} [env {option.env}; default {shown}]")


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {name: getattr(args, name, None) for name, _o, _d in Settings.options()}
    for name, value in overrides.items():
        if isinstance(value, list):  # a repeated flag: each occurrence parsed to a tuple
            overrides[name] = tuple(item for parsed in value for item in parsed)
    try:
        return Settings.from_env(**overrides)
    except ValueError as exc:
        raise SystemExit(f"collab: {exc}") from exc


def _configure_logging(settings: Settings) -> None:
    from collab import logs

    logs.configure(settings.log_level, settings.log_format)
    logging.getLogger("uvicorn.error").addFilter(_DenialNoise())
    for name in ("uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).addFilter(_RedactTokens())


class _DenialNoise(logging.Filter):
    """uvicorn logs an error after every refused upgrade (an HTTP denial); it is not one."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "without completing handshake" not in record.getMessage()


_TOKEN_IN_URL = re.compile(r"([?&]token=)[^&\s\"']*", re.IGNORECASE)


class _RedactTokens(logging.Filter):
    """uvicorn logs every request's URL, query string included: never a token."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "token=" in message.lower():
            record.msg = _TOKEN_IN_URL.sub(r"\1[redacted]", message)
            record.args = None
        return True


def _raise_open_files_limit() -> None:
    """A server holds a file descriptor per connection: use all the system allows."""
    try:
        import resource
    except ImportError:  # not on this platform
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def listen(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """Bind and listen before anything starts, so that a busy port is one clear error."""
    family, kind, proto, _name, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def _run(main: Coroutine[Any, Any, T], loop_factory: Callable[[], asyncio.AbstractEventLoop] | None) -> T:
    if loop_factory is None or sys.version_info < (3, 11):
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main)


EXIT_NOT_STORED = 5
"""``collab serve`` stopped with accepted updates the store never took."""


def serve(args: argparse.Namespace) -> int:
    """Run the server. Every way it can fail to start is one line on stderr and a non-zero
    exit: bad settings 2, an address it cannot listen on 4, a part that cannot start 3. A stop
    that leaves accepted updates unstored (the store kept refusing them) exits 5."""
    import uvicorn

    from collab.app import CannotStart, Collab
    from collab.config import instance_local_store_problem
    from collab.store import UnsupportedStore
    from collab.transport.direct import DirectWebSocketProtocol
    from collab.transport.wsprotocol import WebSocketProtocol

    settings = _settings(args)
    _configure_logging(settings)
    problem = instance_local_store_problem(settings)
    if problem:
        print(f"collab: {problem}", file=sys.stderr)
        return 2
    try:
        collab = Collab(settings)
    except (UnsupportedStore, ValueError) as exc:
        print(f"collab: {exc}", file=sys.stderr)
        return 2
    addresses = [(settings.host, settings.port)]
    if settings.metrics_listen is not None:
        addresses.append(settings.metrics_listen)
    sockets: list[socket.socket] = []
    for host, port in addresses:
        try:
            sockets.append(listen(host, port))
        except OSError as exc:
            for sock in sockets:
                sock.close()
            reason = (exc.strerror or str(exc)).lower()
            print(f"collab: cannot listen on {host}:{port}: {reason}"
                  + (" (is another server running there?)" if exc.errno == errno.EADDRINUSE else ""),
                  file=sys.stderr)
            return 4
    config = uvicorn.Config(
        collab.app, host=settings.host, port=settings.port, log_level=settings.log_level, log_config=None,
        http=collab.guard.protocol,
        ws=DirectWebSocketProtocol if settings.websocket_layer == "direct" else WebSocketProtocol,
        ws_max_size=settings.max_message_size, ws_per_message_deflate=settings.per_message_deflate,
        lifespan="off", timeout_graceful_shutdown=5,
        proxy_headers=settings.forwarded_allow_ips is not None,
        forwarded_allow_ips=settings.forwarded_allow_ips,
    )
    _raise_open_files_limit()

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            collab.accepting = False  # readiness fails at once; new sockets are refused
            if collab.loop is not None:  # parked polls are answered now, not after the grace
                collab.loop.call_soon_threadsafe(collab.drain)
            super().handle_exit(sig, frame)
            self._captured_signals.clear()  # a graceful stop exits 0, not by re-raising the signal

    async def main() -> int:
        # The same lifespan a host application enters, entered here rather than by uvicorn so
        # that a part that cannot start is reported once, by us, and nothing says "stopped"
        # after it.
        async with contextlib.AsyncExitStack() as stack:
            try:
                await stack.enter_async_context(collab.lifespan())
            except CannotStart as exc:
                print(exc, file=sys.stderr)
                return 3
            if settings.metrics_listen is not None:
                log.info("/metrics on http://%s:%d only", *settings.metrics_listen)
            _tune_collector()
            await Server(config).serve(sockets=sockets)
        return EXIT_NOT_STORED if collab.store.not_stored else 0

    try:
        return _run(main(), config.get_loop_factory())
    finally:
        for sock in sockets:
            sock.close()


GC_YOUNG_THRESHOLD = 20_000
"""Allocations between two collections of the youngest generation (Python's default: 700).
Handling a message allocates a few dozen short-lived objects that reference counting frees;
at the default the collector ran every few dozen messages for nothing (4 % of the CPU)."""

GC_MIDDLE_THRESHOLD = 100
"""Young collections between two collections of the middle generation (Python's default: 10,
every 200,000 allocations here). What a young collection finds alive is mostly the state of
connections being opened, most of which is gone soon after: a storm of connections had the
middle generation traverse it all again (about a tenth of the CPU of opening 2,000 stored
documents) to find almost nothing to free."""

GC_OLD_THRESHOLD = 1
"""Middle collections before a full one is considered (Python's default: 10): with the middle
generation ten times rarer, full collections stay about as frequent as at the defaults above
(every few million allocations, and only once the heap grew by a quarter, as ever)."""


def _tune_collector() -> None:
    """Leave what the server made to start (modules, settings, the app) out of every
    collection, and collect the young and middle generations less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, GC_MIDDLE_THRESHOLD, GC_OLD_THRESHOLD)


class StoreUnavailable(Exception):
    """The store named on the command line cannot be used; the message says why."""


def _with_store(url: str, work: Callable[[Store], Awaitable[T]], *, must_exist: bool = False) -> T:
    """Open the store at ``url``, run ``work`` on it, close it; every failure becomes one
    :class:`StoreUnavailable` with a message for people."""
    from collab.store import UnsupportedStore, open_store

    if must_exist and url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        raise StoreUnavailable(f"no SQLite store at {url[len('sqlite:///'):]}")

    async def run() -> T:
        store = open_store(url)
        await store.open()
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except UnsupportedStore as exc:
        raise StoreUnavailable(str(exc)) from exc
    except Exception as exc:
        raise StoreUnavailable(f"cannot use the store {redact_url(url)}: "
                               f"{exc or type(exc).__name__}") from exc


def db_upgrade(args: argparse.Namespace) -> int:
    """Create or migrate the store's schema; safe to run while instances start."""
    settings = _settings(args)

    async def nothing(_store: Store) -> None:
        return None  # opening the store creates or migrates its schema

    try:
        _with_store(settings.store, nothing)
    except StoreUnavailable as exc:
        print(f"collab: {exc}", file=sys.stderr)
        return 1
    print(f"schema of {settings.store} is up to date")
    return 0


def db_check(args: argparse.Namespace) -> int:
    """Check a whole store: the store's own check (SQLite's integrity_check), then every
    document loaded whole, one at a time. Lists what is wrong; exits 0 when nothing is, 1 when
    the store or a document is damaged or incomplete, 2 when the store cannot be checked."""
    from collab.store import Damage, StoreDamaged

    settings = _settings(args)
    where = redact_url(settings.store)
    progress = sys.stderr.isatty()

    async def check(store: Store) -> tuple[list[str], list[Damage], int]:
        problems = await store.check_store()
        for problem in problems:
            print(f"store       {where}  {problem}")
        found: list[Damage] = []
        checked = 0
        async for _name, damage in store.check():
            checked += 1
            if damage is not None:
                found.append(damage)
                print(f"{damage.kind:<10}  {damage.name}  {damage.reason}", flush=True)
            if progress and checked % 100 == 0:
                print(f"checked {checked} documents...", end="\r", file=sys.stderr, flush=True)
        return problems, found, checked

    try:
        problems, found, checked = _with_store(settings.store, check, must_exist=True)
    except StoreUnavailable as exc:
        if isinstance(exc.__cause__, StoreDamaged):
            print(f"store       {where}  {exc.__cause__}")
            print(f"collab: the store {where} is damaged: it is refused as a whole", file=sys.stderr)
            return 1
        print(f"collab: {exc}", file=sys.stderr)
        return 2
    kinds = [damage.kind for damage in found]
    summary = (f"{where}: {checked} documents checked, {kinds.count('damaged')} damaged, "
               f"{kinds.count('incomplete')} incomplete"
               + (f"; the store itself has {len(problems)} problems" if problems else ""))
    print(summary, file=sys.stderr)
    return 1 if problems or found else 0


def token(args: argparse.Namespace) -> int:
    """Print a signed token for one document (or a name prefix) and a mode."""
    from collab.tokens import mint

    settings = _settings(args)
    if not settings.secret:
        print("collab: no secret to sign with: set COLLAB_SECRET (or --secret)", file=sys.stderr)
        return 2
    print(mint(settings.secret, mode=args.mode, ttl=args.ttl, doc=args.doc,
               doc_prefix=args.doc_prefix, sub=args.sub, name=args.name))
    return 0


def _ttl(text: str) -> float:
    from collab.tokens import parse_ttl

    return parse_ttl(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="collab", description=__doc__)
    parser.add_argument("--version", action="version", version=f"collab {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve_parser = commands.add_parser(
        "serve", help="serve the editor and the Yjs WebSocket endpoint",
        description="Serve the editor on / and the y-websocket endpoint on /ws/<room>. Every "
                    "option can also be set with the environment variable named in its help.")
    _add_settings_arguments(serve_parser)
    serve_parser.set_defaults(func=serve, network=True)

    db_parser = commands.add_parser("db", help="manage the document store")
    db_commands = db_parser.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    upgrade_parser = db_commands.add_parser("upgrade", help="create or migrate the store schema")
    _add_settings_arguments(upgrade_parser, {"store"})
    upgrade_parser.set_defaults(func=db_upgrade)
    check_parser = db_commands.add_parser(
        "check", help="check the whole store; list damaged documents",
        description=db_check.__doc__)
    _add_settings_arguments(check_parser, {"store"})
    check_parser.set_defaults(func=db_check)

    from collab import manage

    token_parser = commands.add_parser(
        "token", help="print a signed access token",
        description="Print a JWT (HS256, signed with COLLAB_SECRET) that lets its holder open one "
                    "document, or every document whose name starts with a prefix, to read or to "
                    "write. A backend can mint the same tokens with any JWT library (claims: exp, "
                    "doc or doc_prefix, mode, optional sub and name).")
    which = token_parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--doc", metavar="NAME", help="the document name, exactly as in the URL")
    which.add_argument("--doc-prefix", metavar="PREFIX", help="every document whose name starts so")
    token_parser.add_argument("--mode", choices=("read", "write"), required=True)
    token_parser.add_argument("--ttl", type=argument_type(_ttl), required=True,
                              help="how long it is valid: seconds, or a number with s, m, h or d")
    token_parser.add_argument("--sub", help="who it is for (the subject)")
    token_parser.add_argument("--name", help="the name shown in presence")
    _add_settings_arguments(token_parser, {"secret"})
    token_parser.set_defaults(func=token)

    manage.add_commands(commands)
    _add_loadtest(commands)
    return parser


def _add_loadtest(commands: Any) -> None:
    try:
        from collab import loadtest  # type: ignore[attr-defined]
    except ImportError:
        return
    if not hasattr(loadtest, "add_arguments"):
        return
    loadtest_parser = commands.add_parser(
        "loadtest", help="load-test any y-websocket server",
        description=getattr(loadtest, "__doc__", None))
    loadtest.add_arguments(loadtest_parser)
    loadtest_parser.set_defaults(func=loadtest.run, network=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # A server (or load tester) writes to sockets that peers may reset at any moment: a broken
    # pipe must be an error on that one write (EPIPE), never the end of the process. Commands
    # that print keep the default, so that `collab export doc | head` ends quietly.
    network = getattr(args, "network", False)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN if network else signal.SIG_DFL)
    return int(args.func(args) or 0)
