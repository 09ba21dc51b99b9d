"""`collab serve` without the update gate, for bench/gate_cost.py only: every update goes to the
engine as it arrived, the way it did before the gate existed. Never run this for real clients."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collab import cli, gate


def _pass_through(update: bytes, _state: object) -> gate.Plan:
    return gate.Plan(update, None, {})


def _nothing(_data: bytes) -> None:
    return None


gate.plan = _pass_through  # type: ignore[assignment]
gate.check_state_vector = _nothing  # type: ignore[assignment]

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
