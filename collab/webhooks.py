"""Webhooks: what happens to documents, POSTed as JSON to the URLs given with ``--webhook``.

For backends that are not Python (a Python host application uses ``on_change`` instead). One
event per request::

    POST <url>
    Content-Type: application/json
    X-Collab-Event: document.changed
    X-Collab-Delivery: 5f0c…            (the event's id: the same on every attempt)
    X-Collab-Signature: sha256=<hex>    (HMAC-SHA256 of the body with --webhook-secret)

    {"id": "5f0c…", "event": "document.changed", "document": "notes", "time": "…Z",
     "instance": "…", "text": "…"}

``text`` is sent with ``document.changed`` only (the text when the debounced notification ran).
A delivery that fails (no connection, a timeout, a 5xx, 408 or 429) is retried with exponential
backoff up to ``--webhook-attempts`` attempts in all; a 2xx ends it, any other status gives up at
once (the receiver refused it). Each URL has its own queue, delivered in order, holding at most
``MAX_QUEUED`` events (past it, the oldest is dropped and counted). The counters are on
``/metrics``; the stdlib's HTTP client runs on a worker thread, so the event loop never waits
on a receiver.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import hmac
import json
import logging
import random
import urllib.error
import urllib.request
import uuid
from collections import deque
from dataclasses import dataclass

from collab import __version__
from collab.changes import Listener
from collab.metrics import gauge

log = logging.getLogger("collab.webhooks")

SIGNATURE_HEADER = "X-Collab-Signature"
EVENT_HEADER = "X-Collab-Event"
DELIVERY_HEADER = "X-Collab-Delivery"
MAX_QUEUED = 1000
"""Events waiting per URL before the oldest is dropped."""
FIRST_RETRY = 0.5
MAX_RETRY = 30.0
"""Seconds before the second attempt, doubled for each one after (with jitter), up to this."""
RETRIED_STATUSES = frozenset({408, 429})


def sign(secret: str, body: bytes) -> str:
    """The value of :data:`SIGNATURE_HEADER` for ``body``."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, signature: str) -> bool:
    """What a receiver checks (in constant time)."""
    return hmac.compare_digest(sign(secret, body), signature)


@dataclass(slots=True)
class WebhookStats:
    events: int = 0
    """Events queued (one per URL)."""
    delivered: int = 0
    attempts_failed: int = 0
    """Attempts that failed (each retried, unless it was the last)."""
    given_up: int = 0
    """Events not delivered after the last attempt, or refused by the receiver."""
    dropped: int = 0
    """Events dropped from a full queue."""
    queued: int = gauge("events waiting to be delivered")


class Delivery(Exception):
    """An attempt failed; ``retry`` says whether another may succeed."""

    def __init__(self, reason: str, *, retry: bool) -> None:
        super().__init__(reason)
        self.retry = retry


def post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
    """One attempt (blocking: run on a worker thread); the status, or :class:`Delivery`."""
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as error:
        status = error.code
        raise Delivery(f"HTTP {status}", retry=status >= 500 or status in RETRIED_STATUSES) from None
    except (OSError, ValueError) as exc:  # refused, reset, timed out, a bad URL
        raise Delivery(str(getattr(exc, "reason", exc)) or type(exc).__name__, retry=True) from None


class Webhooks(Listener):
    """The ``--webhook`` URLs, each with its own queue and sender task."""

    def __init__(self, urls: tuple[str, ...], *, secret: str | None, instance: str,
                 attempts: int = 5, timeout: float = 10.0) -> None:
        self.urls = urls
        self.secret = secret
        self.instance = instance
        self.attempts = attempts
        self.timeout = timeout
        self.stats = WebhookStats()
        self._queues: dict[str, deque[tuple[str, bytes, str]]] = {url: deque() for url in urls}
        self._wake: dict[str, asyncio.Event] = {}
        self._senders: list[asyncio.Task[None]] = []

    # --- Listener -----------------------------------------------------------------------------

    async def changed(self, name: str, text: str, update: bytes | None) -> None:
        self._queue("document.changed", name, text=text)

    def happened(self, event: str, name: str) -> None:
        self._queue(event, name)

    # --- queues -------------------------------------------------------------------------------

    def _queue(self, event: str, name: str, **extra: object) -> None:
        delivery = uuid.uuid4().hex
        moment = datetime.datetime.now(datetime.timezone.utc)
        body = json.dumps({"id": delivery, "event": event, "document": name,
                           "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                           "instance": self.instance, **extra}, ensure_ascii=False).encode("utf-8")
        for url, queue in self._queues.items():
            if len(queue) >= MAX_QUEUED:
                queue.popleft()
                self.stats.dropped += 1
                self.stats.queued -= 1
                log.warning("webhook %s: queue full, the oldest event was dropped", url)
            queue.append((event, body, delivery))
            self.stats.events += 1
            self.stats.queued += 1
            wake = self._wake.get(url)
            if wake is not None:
                wake.set()

    def start(self) -> None:
        for url in self.urls:
            self._wake[url] = asyncio.Event()
            self._wake[url].set()
            self._senders.append(asyncio.get_running_loop().create_task(self._send(url),
                                                                        name=f"webhook:{url}"))

    async def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued for up to ``timeout`` seconds, then stop."""
        deadline = asyncio.get_running_loop().time() + timeout
        while any(self._queues.values()) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)  # the senders are at work; nothing to await on all of them
        for task in self._senders:
            task.cancel()
        await asyncio.gather(*self._senders, return_exceptions=True)
        left = sum(len(queue) for queue in self._queues.values())
        if left:
            log.warning("%d webhook events were not delivered before shutdown", left)

    async def _send(self, url: str) -> None:
        queue, wake = self._queues[url], self._wake[url]
        while True:
            await wake.wait()
            wake.clear()
            while queue:
                event, body, delivery = queue[0]
                await self._deliver(url, event, body, delivery)
                if queue and queue[0][2] == delivery:
                    queue.popleft()
                    self.stats.queued -= 1

    async def _deliver(self, url: str, event: str, body: bytes, delivery: str) -> None:
        headers = {"Content-Type": "application/json", EVENT_HEADER: event, DELIVERY_HEADER: delivery,
                   "User-Agent": f"collab/{__version__}"}
        if self.secret:
            headers[SIGNATURE_HEADER] = sign(self.secret, body)
        delay = FIRST_RETRY
        for attempt in range(1, self.attempts + 1):
            try:
                await asyncio.to_thread(post, url, body, headers, self.timeout)
            except Delivery as failed:
                self.stats.attempts_failed += 1
                if not failed.retry or attempt == self.attempts:
                    self.stats.given_up += 1
                    log.warning("webhook %s: %s not delivered after %d attempts (%s)", url, event,
                                attempt, failed)
                    return
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, MAX_RETRY)
                continue
            self.stats.delivered += 1
            return
