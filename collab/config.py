"""Settings: one typed object, filled from ``COLLAB_*`` environment variables and CLI flags."""

from __future__ import annotations

import argparse
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

DEFAULT_STORE = "sqlite:///./data/collab.db"
PACKAGED_EDITOR = Path(__file__).resolve().parent / "web"
"""Where wheels and sdists put the built editor (see setup.py)."""
CHECKOUT_EDITOR = Path(__file__).resolve().parent.parent / "web" / "dist"
"""Where ``make web`` builds it in a source checkout."""
INSTANCE_LOCAL_STORES = ("sqlite:", "memory:")
MANY_INSTANCE_PLATFORMS = {"GAE_INSTANCE": "App Engine", "K_SERVICE": "Cloud Run"}
"""Variables set by platforms that may run several instances of one service at once."""


def redact_url(url: str) -> str:
    """A URL without its credentials, for logs and messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://…@{rest.rsplit('@', 1)[1]}"
    return url


LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
LOG_FORMATS = ("text", "json")


def boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{text!r} is not a boolean (use true or false)")


def port(text: str) -> int:
    value = _whole(text)
    if not 1 <= value <= 65535:
        raise ValueError(f"{value} is not a TCP port (1-65535)")
    return value


def log_level(text: str) -> str:
    value = text.strip().lower()
    if value not in LOG_LEVELS:
        raise ValueError(f"{text!r} is not a log level ({', '.join(LOG_LEVELS)})")
    return value


WEBSOCKET_LAYERS = ("direct", "asgi")


def websocket_layer(text: str) -> str:
    value = text.strip().lower()
    if value not in WEBSOCKET_LAYERS:
        raise ValueError(f"{text!r} is not a WebSocket layer ({', '.join(WEBSOCKET_LAYERS)})")
    return value


def log_format(text: str) -> str:
    value = text.strip().lower()
    if value not in LOG_FORMATS:
        raise ValueError(f"{text!r} is not a log format ({', '.join(LOG_FORMATS)})")
    return value


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"expected a whole number, got {text!r}") from None


def _real(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"expected a number, got {text!r}") from None


def positive_int(text: str) -> int:
    value = _whole(text)
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = _whole(text)
    if value < 0:
        raise ValueError(f"must not be negative, got {value}")
    return value


def positive_float(text: str) -> float:
    value = _real(text)
    if not value > 0:
        raise ValueError(f"must be greater than 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = _real(text)
    if not value >= 0:
        raise ValueError(f"must not be negative, got {text}")
    return value


def secret(text: str) -> str:
    if len(text.encode("utf-8")) < 32:
        raise ValueError("must be at least 32 bytes (HS256 needs a 256-bit key); "
                         "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return text


def origin_list(text: str) -> tuple[str, ...]:
    """Comma-separated web origins (``https://app.example.com``), ``null`` or ``*``."""
    origins = tuple(part.strip().rstrip("/").lower() for part in text.split(",") if part.strip())
    for origin in origins:
        if origin not in ("*", "null") and "://" not in origin:
            raise ValueError(f"{origin!r} is not an origin (scheme://host[:port], null or *)")
    return origins


def url_list(text: str) -> tuple[str, ...]:
    """Space-separated http:// or https:// URLs."""
    urls = tuple(text.split())
    for url in urls:
        if not url.lower().startswith(("http://", "https://")) or len(url) <= len("https://"):
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
    return urls


def listen_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9090`` for IPv6)."""
    host, sep, number = text.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), port(number)


def argument_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """One of these parsers for argparse, which shows an ArgumentTypeError's message as is."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__
    return convert


@dataclass(frozen=True, slots=True)
class Option:
    """One setting's command-line and environment face."""

    help: str
    env: str
    parse: Callable[[str], Any] = str
    metavar: str | None = None
    repeat: bool = False
    """The flag may be given more than once (each adds to a tuple)."""


@dataclass(slots=True)
class Settings:
    host: str = field(default="127.0.0.1", metadata={"option": Option(
        "interface to listen on (0.0.0.0 for all)", "COLLAB_HOST", metavar="HOST")})
    port: int = field(default=8080, metadata={"option": Option(
        "TCP port", "COLLAB_PORT", port, "PORT")})
    store: str = field(default=DEFAULT_STORE, metadata={"option": Option(
        "document store: sqlite:///PATH, postgresql://USER@HOST/DB or memory://",
        "COLLAB_STORE", metavar="URL")})
    redis: str | None = field(default=None, metadata={"option": Option(
        "Redis URL for fan-out between instances (redis://HOST:6379); none for one instance",
        "COLLAB_REDIS_URL", metavar="URL")})
    bus_timeout: float = field(default=3.0, metadata={"option": Option(
        "the Redis bus counts as down when Redis leaves a ping or a publish unanswered this "
        "long (a hung Redis), as when it refuses connections; rooms then converge through the "
        "store", "COLLAB_BUS_TIMEOUT", positive_float, "SECONDS")})
    bus_poll_interval: float = field(default=1.0, metadata={"option": Option(
        "while the bus is down, each room with clients reads what other instances stored "
        "this often and hands it to its clients", "COLLAB_BUS_POLL_INTERVAL", positive_float,
        "SECONDS")})
    log_level: str = field(default="info", metadata={"option": Option(
        "critical, error, warning, info, debug or trace", "COLLAB_LOG_LEVEL", log_level, "LEVEL")})
    secret: str | None = field(default=None, repr=False, metadata={"option": Option(
        "HS256 key for signed tokens (at least 32 bytes); with it every connection needs a token "
        "naming its document and mode (collab token), without it the server is open to everyone",
        "COLLAB_SECRET", secret, "KEY")})
    share_max_ttl: float = field(default=30 * 86400.0, metadata={"option": Option(
        "longest a share link made in the editor stays valid, in seconds (never longer than the "
        "sharer's own token either)", "COLLAB_SHARE_MAX_TTL", positive_float, "SECONDS")})
    version_quiet: float = field(default=10.0, metadata={"option": Option(
        "seconds without an edit that end a burst of editing: a version of the document is kept "
        "then", "COLLAB_VERSION_QUIET", positive_float, "SECONDS")})
    version_interval: float = field(default=300.0, metadata={"option": Option(
        "while editing goes on, a version is kept at least this often (seconds)",
        "COLLAB_VERSION_INTERVAL", positive_float, "SECONDS")})
    version_retention: float = field(default=30 * 86400.0, metadata={"option": Option(
        "automatic versions older than this (seconds) are removed, the newest one of a document "
        "excepted; named versions stay until the document is deleted; 0 keeps them all",
        "COLLAB_VERSION_RETENTION", non_negative_float, "SECONDS")})
    allowed_origins: tuple[str, ...] = field(default=(), metadata={"option": Option(
        "web origins whose pages may connect, comma-separated (* for any); the server's own "
        "origin always may; empty: own origin and loopback pages only",
        "COLLAB_ALLOWED_ORIGINS", origin_list, "ORIGINS")})
    webhook: tuple[str, ...] = field(default=(), metadata={"option": Option(
        "POST a signed JSON event to this URL when a document is created, changed (debounced), "
        "deleted, or gets its first or loses its last client here; the flag may be repeated, "
        "the variable holds URLs separated by spaces", "COLLAB_WEBHOOK", url_list, "URL",
        repeat=True)})
    webhook_secret: str | None = field(default=None, repr=False, metadata={"option": Option(
        "sign webhook bodies with HMAC-SHA256 and this key (header X-Collab-Signature)",
        "COLLAB_WEBHOOK_SECRET", metavar="KEY")})
    webhook_attempts: int = field(default=5, metadata={"option": Option(
        "attempts to deliver one webhook event (retried with exponential backoff) before "
        "giving up", "COLLAB_WEBHOOK_ATTEMPTS", positive_int, "N")})
    webhook_timeout: float = field(default=10.0, metadata={"option": Option(
        "seconds one webhook attempt may take", "COLLAB_WEBHOOK_TIMEOUT", positive_float, "SECONDS")})
    recheck_interval: float = field(default=60.0, metadata={"option": Option(
        "decide again this often whether each open WebSocket may still read or write (the "
        "token, or a host application's authorize); withdrawn access closes it with 4403 "
        "(4401 for an expired token), a lost write access makes it read-only; 0: at connect only",
        "COLLAB_RECHECK_INTERVAL", non_negative_float, "SECONDS")})
    change_debounce: float = field(default=2.0, metadata={"option": Option(
        "change notifications (a host application's on_change, webhooks) wait until a document "
        "has been quiet this long", "COLLAB_CHANGE_DEBOUNCE", positive_float, "SECONDS")})
    change_max_delay: float = field(default=10.0, metadata={"option": Option(
        "a document changed without a pause is notified at least this often",
        "COLLAB_CHANGE_MAX_DELAY", positive_float, "SECONDS")})
    metrics_token: str | None = field(default=None, repr=False, metadata={"option": Option(
        "/metrics answers only requests with Authorization: Bearer TOKEN",
        "COLLAB_METRICS_TOKEN", metavar="TOKEN")})
    metrics_listen: tuple[str, int] | None = field(default=None, metadata={"option": Option(
        "serve /metrics on this separate HOST:PORT only (not on the public port)",
        "COLLAB_METRICS_LISTEN", listen_address, "HOST:PORT")})
    log_format: str = field(default="text", metadata={"option": Option(
        "text for people, or json: one object per line on stderr with severity, message, time "
        "(and document and connection on lines about a connection), for log platforms",
        "COLLAB_LOG_FORMAT", log_format, "FORMAT")})
    single_instance: bool = field(default=False, metadata={"option": Option(
        "this deployment runs one instance: allow an instance-local store (SQLite, memory) on a "
        "platform that may run several (App Engine, Cloud Run)", "COLLAB_SINGLE_INSTANCE",
        boolean, "BOOL")})
    max_message_size: int = field(default=16 * 1024 * 1024, metadata={"option": Option(
        "largest WebSocket message accepted, in bytes; larger ones close the socket with 1009 "
        "(an HTTP fallback or document API body: 413)",
        "COLLAB_MAX_MESSAGE_SIZE", positive_int, "BYTES")})
    max_document_size: int = field(default=16 * 1024 * 1024, metadata={"option": Option(
        "largest document (its encoded Yjs state, what a new client downloads), in bytes; an "
        "update that would grow a document past it is refused with 4413",
        "COLLAB_MAX_DOCUMENT_SIZE", positive_int, "BYTES")})
    max_presence_state: int = field(default=8 * 1024, metadata={"option": Option(
        "largest presence (awareness) state of one client, in bytes of JSON (past it: 4413)",
        "COLLAB_MAX_PRESENCE_STATE", positive_int, "BYTES")})
    max_presence_entries: int = field(default=8, metadata={"option": Option(
        "presence (awareness) client ids one connection may bring into a room (stock clients "
        "bring one; past it: 4413)", "COLLAB_MAX_PRESENCE_ENTRIES", positive_int, "IDS")})
    max_message_rate: float = field(default=200.0, metadata={"option": Option(
        "messages per second one connection may send on average; faster ones are throttled "
        "(reading pauses), and closed with 4429 after --flood-patience seconds of it",
        "COLLAB_MAX_MESSAGE_RATE", positive_float, "PER_SECOND")})
    message_burst: int = field(default=1000, metadata={"option": Option(
        "messages one connection may send at once above the average rate",
        "COLLAB_MESSAGE_BURST", positive_int, "MESSAGES")})
    flood_patience: float = field(default=10.0, metadata={"option": Option(
        "seconds a connection may be held to the message rate without a break before it is "
        "closed with 4429", "COLLAB_FLOOD_PATIENCE", positive_float, "SECONDS")})
    max_connections: int = field(default=10_000, metadata={"option": Option(
        "connections this instance holds at most: WebSockets, and HTTP fallback requests in "
        "progress such as parked polls (past it: HTTP 503)",
        "COLLAB_MAX_CONNECTIONS", positive_int, "CONNECTIONS")})
    max_connections_per_document: int = field(default=1_000, metadata={"option": Option(
        "connections to one document on this instance, at most (past it: HTTP 503)",
        "COLLAB_MAX_CONNECTIONS_PER_DOCUMENT", positive_int, "CONNECTIONS")})
    max_connections_per_address: int = field(default=1_000, metadata={"option": Option(
        "connections from one client address, at most (past it: HTTP 503); behind a proxy "
        "set --forwarded-allow-ips so that the address is the client's",
        "COLLAB_MAX_CONNECTIONS_PER_ADDRESS", positive_int, "CONNECTIONS")})
    forwarded_allow_ips: str | None = field(default=None, metadata={"option": Option(
        "proxies trusted to name the client in X-Forwarded-For (comma-separated addresses, or *)",
        "COLLAB_FORWARDED_ALLOW_IPS", metavar="ADDRESSES")})
    request_timeout: float = field(default=10.0, metadata={"option": Option(
        "seconds a client has to send a whole request (a WebSocket handshake's head, or an HTTP "
        "request); slower connections are closed", "COLLAB_REQUEST_TIMEOUT", positive_float,
        "SECONDS")})
    max_request_head: int = field(default=16 * 1024, metadata={"option": Option(
        "largest HTTP request head (request line and headers), in bytes; larger: 431 and closed",
        "COLLAB_MAX_REQUEST_HEAD", positive_int, "BYTES")})
    max_handshakes: int = field(default=1_000, metadata={"option": Option(
        "connections that are still sending their request, at most; past it the oldest is closed",
        "COLLAB_MAX_HANDSHAKES", positive_int, "CONNECTIONS")})
    max_send_buffer: int = field(default=1024 * 1024, metadata={"option": Option(
        "bytes queued for one slow client, beyond one frame of any size (a whole document), "
        "before it is closed with 1013 (it reconnects and resyncs, losing nothing)",
        "COLLAB_MAX_SEND_BUFFER", positive_int, "BYTES")})
    commit_window: float = field(default=0.005, metadata={"option": Option(
        "group-commit window: how long an accepted update may wait to be written with others",
        "COLLAB_COMMIT_WINDOW", non_negative_float, "SECONDS")})
    compact_threshold: int = field(default=500, metadata={"option": Option(
        "fold a document's update log into its snapshot after this many updates",
        "COLLAB_COMPACT_THRESHOLD", positive_int, "UPDATES")})
    compact_log_ratio: float = field(default=0.5, metadata={"option": Option(
        "fold a document's log only once its bytes are also this fraction of its snapshot's: a "
        "fold reads the whole document, so this keeps its cost per update the same whatever the "
        "document's size (0: by --compact-threshold alone)",
        "COLLAB_COMPACT_LOG_RATIO", non_negative_float, "RATIO")})
    compact_cache_bytes: int = field(default=4 * 1024 * 1024, metadata={"option": Option(
        "snapshot bytes whose documents compaction keeps in memory to fold the next log into "
        "(about ten times as much memory; 0 reads every snapshot again)",
        "COLLAB_COMPACT_CACHE_BYTES", non_negative_int, "BYTES")})
    store_backlog_updates: int = field(default=100_000, metadata={"option": Option(
        "accepted updates kept (and retried) while the store refuses commits, at most; past it "
        "or --store-backlog-bytes, writers are closed with 1013 and resend their edits later",
        "COLLAB_STORE_BACKLOG_UPDATES", positive_int, "UPDATES")})
    store_backlog_bytes: int = field(default=64 * 1024 * 1024, metadata={"option": Option(
        "bytes of accepted updates kept (and retried) while the store refuses commits, at most",
        "COLLAB_STORE_BACKLOG_BYTES", positive_int, "BYTES")})
    shutdown_store_wait: float = field(default=10.0, metadata={"option": Option(
        "on SIGTERM, how long to keep trying to store accepted updates the store refuses; "
        "what is still unstored then is reported and the exit status is 5",
        "COLLAB_SHUTDOWN_STORE_WAIT", non_negative_float, "SECONDS")})
    keepalive: float = field(default=15.0, metadata={"option": Option(
        "send a no-op message to a client that has been sent nothing for this long (stock "
        "clients drop a silent socket after 30 s)", "COLLAB_KEEPALIVE", positive_float, "SECONDS")})
    room_idle: float = field(default=5.0, metadata={"option": Option(
        "keep a room in memory this long after its last client leaves", "COLLAB_ROOM_IDLE",
        non_negative_float, "SECONDS")})
    per_message_deflate: bool = field(default=False, metadata={"option": Option(
        "offer WebSocket per-message compression (costs memory and CPU; Yjs updates are small)",
        "COLLAB_PER_MESSAGE_DEFLATE", boolean, "BOOL")})
    websocket_layer: str = field(default="direct", metadata={"option": Option(
        "direct: collab's WebSocket protocol under uvicorn (messages handled where their frames "
        "are parsed, each broadcast framed once for every socket); asgi: uvicorn's protocol, every "
        "message through the ASGI events (what a host application's server does)",
        "COLLAB_WEBSOCKET_LAYER", websocket_layer, "LAYER")})
    presence_batch: float = field(default=0.02, metadata={"option": Option(
        "seconds a presence (cursor) update may wait to be written to a client together with "
        "others, so that a busy room costs a system call per client per batch rather than per "
        "move (with --websocket-layer direct; document updates never wait for it)",
        "COLLAB_PRESENCE_BATCH", non_negative_float, "SECONDS")})
    durable_acks: bool = field(default=True, metadata={"option": Option(
        "echo each update back to its client once stored, for clients that ask with ?acks=1 "
        "(the editor's 'saved' status)",
        "COLLAB_DURABLE_ACKS", boolean, "BOOL")})
    poll_timeout: float = field(default=25.0, metadata={"option": Option(
        "how long an HTTP fallback poll waits for something to send before it is answered "
        "empty (keep it below the idle timeout of proxies on the way)", "COLLAB_POLL_TIMEOUT",
        positive_float, "SECONDS")})
    poll_presence_hold: float = field(default=20.0, metadata={"option": Option(
        "keep the presence of an HTTP fallback client this long after its last request "
        "ended (a live client polls again at once)", "COLLAB_POLL_PRESENCE_HOLD",
        positive_float, "SECONDS")})
    web_dir: Path | None = field(default=None, metadata={"option": Option(
        "directory of a built editor to serve instead of the one shipped with collab (it must "
        "hold index.html)", "COLLAB_WEB_DIR", Path, "DIR")})
    instance_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    @property
    def editor_dir(self) -> Path | None:
        """The built editor to serve: ``web_dir``, else the one in the installed package, else
        the one built in a source checkout; None when there is none."""
        if self.web_dir is not None:
            return self.web_dir
        for candidate in (PACKAGED_EDITOR, CHECKOUT_EDITOR):
            if (candidate / "index.html").is_file():
                return candidate
        return None

    @classmethod
    def options(cls) -> list[tuple[str, Option, Any]]:
        """(field name, option, default) for every setting a person can set."""
        result = []
        for f in fields(cls):
            option = f.metadata.get("option")
            if option is not None:
                result.append((f.name, option, f.default))
        return result

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then ``COLLAB_*`` variables, then explicit overrides (CLI flags)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, option, _default in cls.options():
            raw = environ.get(option.env)
            if raw is not None and raw != "":
                try:
                    values[name] = option.parse(raw)
                except ValueError as exc:
                    raise ValueError(f"{option.env}={raw!r}: {exc}") from exc
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def instance_local_store_problem(settings: Settings, environ: Mapping[str, str] | None = None) -> str | None:
    """Why this deployment would split documents between instances, or None. On a platform
    that may run several instances, a store inside each instance (SQLite, memory) gives each
    its own share of every document (Redis relays live edits, but each instance still stores
    only what its clients sent), so it is refused unless one instance is declared intended."""
    environ = os.environ if environ is None else environ
    platform = next((f"{name} ({variable} is set)" for variable, name in MANY_INSTANCE_PLATFORMS.items()
                     if environ.get(variable)), None)
    if platform is None or settings.single_instance or not settings.store.startswith(INSTANCE_LOCAL_STORES):
        return None
    return (f"refusing to start: {platform} may run several instances, and the store "
            f"{redact_url(settings.store)} is local to each, so documents would split between them; "
            "set COLLAB_STORE to postgresql://... and COLLAB_REDIS_URL to redis://..., or "
            "COLLAB_SINGLE_INSTANCE=true (--single-instance) if one instance is intended")


def reference() -> str:
    """docs/configuration.md: every setting, its flag, its variable and its default, from the
    settings object itself (a test keeps the committed file equal to this)."""
    lines = [
        "# Configuration reference",
        "",
        "Every setting of `collab serve` is a flag and a `COLLAB_*` environment variable (a flag",
        "wins over the variable, the variable over the default). A boolean flag alone means true",
        "(`--single-instance`); it also takes a value (`--durable-acks false`). This page is",
        "generated from the settings object (`make docs`); a test keeps it current.",
        "",
        "| setting | flag | environment | default |",
        "|---|---|---|---|",
    ]
    for name, option, default in Settings.options():
        flag = "--" + name.replace("_", "-") + (f" {option.metavar}" if option.metavar else "")
        shown = "none" if default is None else str(default)
        if name == "web_dir":
            shown = "the editor shipped with collab"
        help = option.help.replace("|", "\\|")
        lines.append(f"| {help} | `{flag}` | `{option.env}` | `{shown}` |")
    lines += [
        "",
        "Not settings of the server, but read by it: `GAE_INSTANCE` (App Engine) and `K_SERVICE`",
        "(Cloud Run) say that several instances may run, so an instance-local store is refused",
        "unless `--single-instance` is given. The document commands (`collab ls`, `export`,",
        "`import`, `rm`) take `--server URL` or `--store URL`; see `collab COMMAND --help`.",
        "",
    ]
    return "\n".join(lines)
