"""A webhook receiver for tests: a real local HTTP server that records every POST."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from latentq.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_signature

__all__ = ["SECRET", "Delivery", "Receiver"]

SECRET = "test-webhook-secret"


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def verifies(self, secret: str = SECRET) -> bool:
        return verify_signature(secret, self.body, self.headers.get(TIMESTAMP_HEADER.lower(), ""),
                                self.headers.get(SIGNATURE_HEADER.lower(), ""))  # fmt: skip


class Receiver:
    """A tiny webhook receiver on 127.0.0.1 (free port): records every POST and answers from a script."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.script: list[int] = []  # status codes for the next requests; then 200
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver._lock:
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    receiver.deliveries.append(Delivery(self.path, headers, body, time.monotonic()))
                    status = receiver.script.pop(0) if receiver.script else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
