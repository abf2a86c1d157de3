"""A webhook receiver for tests: a real local HTTP server that records every POST.

Signatures are checked with ``standardwebhooks``, the Standard Webhooks reference library from PyPI.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook

from latentq.webhooks.sender import standard_secret

__all__ = ["SECRET", "Delivery", "Receiver"]

SECRET = "test-webhook-secret"


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    status: int = 200  # what the receiver answered

    @property
    def msg_id(self) -> str:
        return self.headers.get("webhook-id", "")

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.body)

    @property
    def data(self) -> dict[str, Any]:
        """The job's status JSON."""
        return self.payload["data"]

    def verifies(self, secret: str = SECRET) -> bool:
        """Whether the Standard Webhooks library accepts it (``secret``: any string, or whsec_...)."""
        try:
            Webhook(standard_secret(secret)).verify(self.body, self.headers)
            return True
        except Exception:
            return False


class Receiver:
    """A tiny webhook receiver on 127.0.0.1 (free port): records every POST and answers from a script.

    ``script``: status codes for the next requests, then ``respond(delivery)`` if set, else 200.
    """

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.script: list[int] = []
        self.respond: Callable[[Delivery], int] | None = None
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver._lock:
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    delivery = Delivery(self.path, headers, body, time.monotonic())
                    if receiver.script:
                        delivery.status = receiver.script.pop(0)
                    elif receiver.respond is not None:
                        delivery.status = receiver.respond(delivery)
                    receiver.deliveries.append(delivery)
                self.send_response(delivery.status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def accepted(self) -> list[Delivery]:
        """Deliveries answered 2xx."""
        with self._lock:
            return [d for d in self.deliveries if d.status < 300]

    def by_id(self) -> dict[str, Delivery]:
        """The accepted deliveries after deduplication by ``webhook-id`` (what a receiver acts on)."""
        return {d.msg_id: d for d in self.accepted()}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
