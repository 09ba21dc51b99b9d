"""collab: a collaborative text-editing server speaking the Yjs (y-websocket) protocol."""

__version__ = "0.1.0"
