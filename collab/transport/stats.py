"""What a transport counts, for /metrics: one dataclass per transport, rendered with a
``transport`` label (so the WebSocket and the HTTP fallback share every metric name)."""

from __future__ import annotations

from dataclasses import dataclass

from collab.metrics import counter, labelled

REFUSALS = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
            410: "deleted", 413: "too_large", 429: "rate_limited", 431: "head_too_large",
            503: "unavailable"}
"""The ``reason`` label of a request refused with an HTTP status (few, fixed values)."""


def refusal_reason(status: int) -> str:
    return REFUSALS.get(status, f"http_{status}")


@dataclass(slots=True)
class TransportStats:
    connections_accepted: int = counter("connections accepted")
    messages_received: int = counter("messages received from clients")
    received_bytes: int = counter("bytes of messages received from clients")
    messages_sent: int = counter("messages queued for clients")
    sent_bytes: int = counter("bytes of messages queued for clients")
    closes: dict[tuple[int, str], int] = labelled(
        ("code", "by"), "connections ended, by close code and by who ended them (server or client)")
    refused: dict[str, int] = labelled(
        "reason", "connections or messages refused, by reason (the connection is closed or denied)")
