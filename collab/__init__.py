"""collab: a collaborative text-editing server speaking the Yjs (y-websocket) protocol.

Embedding it in a Python application (see docs/embedding.md)::

    from collab import Access, Collab, Settings

    server = Collab(Settings(store="sqlite:///collab.db"), authorize=authorize)
    app = Starlette(routes=[Mount("/collab", app=server.app)], lifespan=server.lifespan)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Access", "AccessRequest", "Collab", "Settings", "__version__"]

if TYPE_CHECKING:
    from collab.admission import Access, AccessRequest
    from collab.app import Collab
    from collab.config import Settings

_EXPORTS = {"Access": "collab.admission", "AccessRequest": "collab.admission",
            "Collab": "collab.app", "Settings": "collab.config"}


def __getattr__(name: str) -> Any:
    """The public names, imported when first used: ``collab token`` need not load the server."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'collab' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
