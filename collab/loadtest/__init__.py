"""``collab loadtest``: drive any y-websocket server with many rooms, clients and typists.

The CLI wires ``add_arguments`` and ``run`` into a subcommand; the benchmark calls the
scenario coroutines in :mod:`collab.loadtest.scenarios` directly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Coroutine
from typing import Any
from urllib.parse import urlsplit

from collab.config import argument_type, non_negative_int, positive_float, positive_int
from collab.loadtest import report, scenarios
from collab.loadtest.engine import TRANSPORTS, Options
from collab.loadtest.scenarios import Load

__all__ = ["add_arguments", "main", "run", "run_async"]


def _server_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("ws", "http") or not parts.hostname:
        raise argparse.ArgumentTypeError(
            f"expected a ws://HOST:PORT/PATH URL (or http://HOST:PORT/poll with --transport poll), "
            f"got {value!r}")
    return value


_positive_int = argument_type(positive_int)
_count = argument_type(non_negative_int)
_positive_float = argument_type(positive_float)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``collab loadtest`` options."""
    parser.add_argument("url", type=_server_url, metavar="URL",
                        help="server base URL, e.g. ws://127.0.0.1:8080/ws (room names are appended); "
                             "with --transport poll, http://HOST:PORT/poll or the same ws:// URL")
    parser.add_argument("--transport", choices=TRANSPORTS, default="websocket",
                        help="websocket (default), or poll: collab's HTTP fallback, the same messages "
                             "over plain requests")
    parser.add_argument("--rooms", type=_positive_int, default=10, help="rooms (default 10)")
    parser.add_argument("--clients", type=_positive_int, default=5, help="clients per room (default 5)")
    parser.add_argument("--writers", type=_count, default=1, help="typing clients per room (default 1)")
    parser.add_argument("--rate", type=_positive_float, default=10.0,
                        help="edits per second per writer (default 10); the ramp's first step")
    parser.add_argument("--duration", type=_positive_float, default=10.0,
                        help="seconds of load (default 10); per step with --ramp")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--ramp", action="store_true",
                        help="raise the rate step by step until p99 passes --p99-bound or a delivery is lost")
    parser.add_argument("--ramp-factor", type=_positive_float, default=1.5, help="rate multiplier per step")
    parser.add_argument("--ramp-steps", type=_positive_int, default=10, help="at most this many steps")
    parser.add_argument("--p99-bound", type=_positive_float, default=100.0, metavar="MS",
                        help="the ramp's p99 latency bound in ms (default 100)")
    parser.add_argument("--join-storm", type=_positive_int, metavar="N",
                        help="instead of typing: N clients join one large document at once")
    parser.add_argument("--doc-size", type=_positive_int, default=200_000, metavar="CHARS",
                        help="document size for --join-storm (default 200000 characters)")
    parser.add_argument("--replica", choices=["lazy", "full"], default="lazy",
                        help="receivers keep updates and merge them at the end (lazy, default) or "
                             "apply each as it arrives like a real client (full)")
    parser.add_argument("--deflate", action="store_true", help="offer permessage-deflate")
    parser.add_argument("--acks", action="store_true",
                        help="ask a collab server for durable acks, as its editor does (they are "
                             "counted apart from deliveries)")
    parser.add_argument("--drain-timeout", type=_positive_float, default=5.0,
                        help="after the load, wait this long without progress for late deliveries")
    parser.add_argument("--connect-timeout", type=_positive_float, default=10.0)
    parser.add_argument("--seed", type=int, help="random seed for positions and phases")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--cleanup", action="store_true",
                        help="afterwards, delete the documents this run created (a collab server's "
                             "document API at the same host, e.g. http://HOST:PORT/api/docs)")


def _validate(args: argparse.Namespace) -> str | None:
    if urlsplit(args.url).scheme == "http" and args.transport != "poll":
        return "an http:// URL is for --transport poll; WebSockets need ws://HOST:PORT/ws"
    if args.transport == "poll" and args.deflate:
        return "--deflate is a WebSocket extension; it does not apply to --transport poll"
    if args.writers > args.clients:
        return f"--writers ({args.writers}) must not exceed --clients ({args.clients})"
    if args.join_storm is None and args.writers < 1:
        return "--writers must be at least 1 unless --join-storm is given"
    if args.join_storm is not None and args.ramp:
        return "--join-storm and --ramp are separate scenarios; give one"
    return None


def run_async(args: argparse.Namespace,
              opts: Options | None = None) -> Coroutine[Any, Any, dict[str, object]]:
    opts = opts or options(args)
    load = Load(args.rooms, args.clients, args.writers, args.rate, args.duration,
                drain_timeout=args.drain_timeout, seed=args.seed)
    progress = not args.no_progress and not args.json
    if args.join_storm is not None:
        return scenarios.join_storm(opts, args.join_storm, args.doc_size)
    if args.ramp:
        return scenarios.ramp(opts, load, factor=args.ramp_factor, steps=args.ramp_steps,
                              p99_bound_ms=args.p99_bound, progress=progress)
    return scenarios.fanout(opts, load, progress=progress)


def options(args: argparse.Namespace) -> Options:
    return Options(args.url, acks=args.acks, deflate=args.deflate, replica=args.replica,
                   connect_timeout=args.connect_timeout, transport=args.transport)


def api_base(ws_url: str) -> str:
    """The HTTP base of a collab server from the URL the load went to (``ws://H:P/prefix/ws``,
    or ``http://H:P/prefix/poll``)."""
    parts = urlsplit(ws_url)
    path = parts.path.rstrip("/")
    for suffix in ("/ws", "/poll"):
        if path.endswith(suffix):
            path = path[:-len(suffix)]
    scheme = "https" if parts.scheme in ("wss", "https") else "http"
    return f"{scheme}://{parts.netloc}{path}"


def cleanup(ws_url: str, prefix: str) -> tuple[int, str | None]:
    """Delete every document named ``<prefix>-…``: (how many, the problem that stopped it)."""
    from collab.manage import NotFound, Problem, ServerDocuments

    documents = ServerDocuments(api_base(ws_url))
    deleted = 0
    try:
        names = [d["name"] for d in documents.list() if d["name"].startswith(prefix + "-")]
        for name in names:
            try:
                documents.delete(name)
                deleted += 1
            except NotFound:
                pass
    except Problem as exc:
        return deleted, str(exc)
    return deleted, None


def run_loop(coro: Coroutine[Any, Any, dict[str, object]]) -> dict[str, object]:
    """Run on uvloop when it is installed: the load tester must not be the bottleneck."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def run(args: argparse.Namespace) -> int:
    """Run the scenario; 0 when it went clean (nothing lost, converged), 1 when not, 2 on usage."""
    problem = _validate(args)
    if problem:
        print(f"collab loadtest: error: {problem}", file=sys.stderr)
        return 2
    opts = options(args)
    try:
        result = run_loop(run_async(args, opts))
    except (OSError, TimeoutError, ConnectionError) as exc:
        print(f"collab loadtest: cannot load {args.url}: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
    finally:
        if args.cleanup:
            deleted, problem = cleanup(args.url, opts.prefix)
            print(f"collab loadtest: cleanup deleted {deleted} documents named {opts.prefix}-…"
                  + (f"; stopped: {problem}" if problem else ""), file=sys.stderr)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(report.render(result))
    warning = scenarios.saturation_warning(result)
    if warning:
        print(warning, file=sys.stderr)
    return 0 if report.clean(result) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="collab loadtest", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
