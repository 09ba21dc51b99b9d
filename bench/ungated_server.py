"""`collab serve` without the update gate, for bench/gate_cost.py only: every update goes to the
engine as it arrived, the way it did before the gate existed. With ``--without-origins`` only the
check of origins (the document's order, collab/order.py) is left out, the rest of the gate kept:
the server as it was before that check. Never run this for real clients."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collab import cli, gate
from collab.order import Order


def _pass_through(update: bytes, _state: object) -> gate.Plan:
    return gate.Plan(update, None, {})


def _nothing(_data: bytes, _state: object = None) -> None:
    return None


def _no_order(_self: Order, _structs: object, *, check: bool = True) -> None:
    return None


if __name__ == "__main__":
    arguments = sys.argv[1:]
    if "--without-origins" in arguments:
        arguments.remove("--without-origins")
        Order.integrate = _no_order  # type: ignore[assignment,method-assign]
    else:
        gate.plan = _pass_through  # type: ignore[assignment]
        gate.typing_item = _nothing  # type: ignore[assignment]  # typing edits: no own read
        gate.check_state_vector = _nothing  # type: ignore[assignment]
    sys.exit(cli.main(arguments))
