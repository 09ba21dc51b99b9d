"""Start real ``collab serve`` processes on loopback for tests, and stop them by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """One ``collab serve`` subprocess. Its log goes to a file beside the test's tmp dir."""

    def __init__(self, store: str, *, port: int | None = None, args: list[str] | None = None,
                 env: dict[str, str] | None = None, log_path: Path | None = None) -> None:
        self.store = store
        self.port = port or free_port()
        self.args = list(args or [])
        self.env = dict(env or {})
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "collab", "serve", "--host", "127.0.0.1",
                "--port", str(self.port), "--store", self.store, *self.args]

    def start(self, timeout: float = 20.0) -> ServerProcess:
        env = {**os.environ, "COLLAB_LOG_LEVEL": "warning", **self.env}
        cmd = self.command()
        if self.log_path is not None:
            self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._log_file or subprocess.DEVNULL,
                                        stderr=subprocess.STDOUT)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"collab serve exited with {self.process.returncode}: {self.log()}")
            try:
                with urllib.request.urlopen(self.http_url + "/readiness_check", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.05)
        raise TimeoutError(f"collab serve on port {self.port} not ready in {timeout} s: {self.log()}")

    def log(self) -> str:
        if self.log_path is not None and self.log_path.exists():
            return self.log_path.read_text(errors="replace")[-4000:]
        return "(no log)"

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        return self._stop(signal.SIGTERM, timeout)

    def kill(self) -> int:
        return self._stop(signal.SIGKILL, 10.0)

    def _stop(self, sig: int, timeout: float) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(5)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return code

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()
        elif self._log_file is not None:
            self._log_file.close()
            self._log_file = None
