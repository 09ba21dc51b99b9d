"""Render a scenario report (the JSON dict) as a table for people."""

from __future__ import annotations


def _num(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if value % 1 else f"{value:,.0f}"
    return str(value)


def _table(rows: list[tuple[str, object]]) -> str:
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {_num(value)}" for name, value in rows)


def _latency(latency: object) -> str:
    if not isinstance(latency, dict):
        return "-"
    return " / ".join(f"{latency[k]:.2f}" for k in ("p50", "p95", "p99", "max"))


def _fanout_rows(r: dict[str, object]) -> list[tuple[str, object]]:
    return [
        ("edits sent", r["edits_sent"]),
        ("edit rate (/s)", r["edit_rate"]),
        ("updates delivered", r["updates_delivered"]),
        ("delivery rate (/s)", r["delivery_rate"]),
        ("latency p50/p95/p99/max (ms)", _latency(r["latency_ms"])),
        ("lost deliveries", r["lost_deliveries"]),
        ("out of order / duplicate", r["out_of_order"]),
        ("connection errors", r["connection_errors"]),
        ("converged", f"{_num(r['converged'])} ({r['rooms_converged']}/{r['rooms_checked']} rooms)"),
        ("load tester CPU (% of a core)", r["loadtester_cpu_percent"]),
    ]


def render(r: dict[str, object]) -> str:
    scenario = r.get("scenario")
    head = f"{scenario} against {r.get('url')}"
    if r.get("transport", "websocket") != "websocket":
        head += f" over {r['transport']}"
    if scenario == "fanout":
        head += (f": {r['rooms']} rooms x {r['clients']} clients, {r['writers']} writer(s)/room"
                 f" at {r['rate']} edits/s for {r['duration']} s")
        return head + "\n" + _table(_fanout_rows(r))
    if scenario == "ramp":
        lines = [head + f": {r['rooms']} rooms x {r['clients']} clients, {r['writers']} writer(s)/room",
                 f"{'step':>4}  {'edits/s':>9}  {'deliveries/s':>12}  {'p50/p95/p99/max ms':>28}"
                 f"  {'lost':>6}  {'cpu %':>5}"]
        for i, step in enumerate(r["steps"], 1):  # type: ignore[arg-type]
            lines.append(f"{i:>4}  {step['edit_rate']:>9,.0f}  {step['delivery_rate']:>12,.0f}"
                         f"  {_latency(step['latency_ms']):>28}  {step['lost_deliveries']:>6}"
                         f"  {step['loadtester_cpu_percent']:>5}")
        lines.append(_table([
            ("highest rate held (edits/s)", r["held_edit_rate"]),
            ("deliveries/s at that rate", r["held_delivery_rate"]),
            ("stopped because", r["stop_reason"]),
            ("converged", r["converged"]),
        ]))
        return "\n".join(lines)
    if scenario == "join_storm":
        return head + "\n" + _table([
            ("document size (chars)", r["doc_size"]),
            ("clients", r["clients"]),
            ("synced", r["synced"]),
            ("failed", r["failed"]),
            ("all synced after (ms)", r["all_synced_ms"]),
            ("sync p50/p95/p99/max (ms)", _latency(r["sync_ms"])),
            ("every client got the whole document", r["ok"]),
        ])
    return head


def clean(r: dict[str, object]) -> bool:
    """True when nothing was lost, nothing failed and every document converged."""
    if r.get("scenario") == "join_storm":
        return bool(r.get("ok"))
    if r.get("scenario") == "ramp":
        return bool(r.get("converged"))
    return bool(r.get("converged")) and r.get("lost_deliveries") == 0 and r.get("connection_errors") == 0
