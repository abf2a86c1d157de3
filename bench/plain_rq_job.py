"""Plain RQ, the way a user sets it up in an afternoon: the job module of bench_cpu.py's row p.

One job per latent, run by a stock ``rq worker --worker-class rq.worker.SimpleWorker``; the model is
loaded once per worker process into a module global (on the first job); the job decodes, converts to
uint8, encodes a PNG with Pillow (``compress_level=1``, as the in-process loop) and writes the file.
Jobs are JSON (``rq.serializers.JSONSerializer`` on the queue and the worker): the latent travels
as base64-encoded safetensors bytes, nothing is pickled.

    # producer
    queue = Queue("plain", connection=redis, serializer=JSONSerializer)
    queue.enqueue(decode_to_png, latent_to_b64(latent), "/out/00001.png")
    # worker (the models file from LATENTQ_MODELS, the weights it names)
    rq worker --worker-class rq.worker.SimpleWorker --serializer rq.serializers.JSONSerializer \
        --path bench --url redis://... plain
"""

from __future__ import annotations

import base64
import io
import os
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

MODELS_ENV = "LATENTQ_MODELS"  # a models file (TOML) naming the TAEF2 weights
MODEL_NAME = "taef2"

_model = None  # loaded on the first job, kept for the worker process's life


def get_model():
    global _model
    if _model is None:
        from latentq.models.loader import load_model
        from latentq.models.registry import load_registry

        _model = load_model(load_registry(os.environ[MODELS_ENV]).get(MODEL_NAME), "cpu")
    return _model


def latent_to_b64(latent: torch.Tensor) -> str:
    """The producer's side: one latent (1, C, h, w) as base64 safetensors bytes (JSON-safe)."""
    return base64.b64encode(save_safetensors({"latent": latent.contiguous()})).decode("ascii")


def decode_to_png(latent_b64: str, out_path: str) -> dict[str, Any]:
    """Decode one latent, write it as a PNG file; return the path and the decode's own milliseconds."""
    latent = load_safetensors(base64.b64decode(latent_b64))["latent"]
    model = get_model()
    from latentq.models.loader import to_uint8

    started = time.perf_counter()
    images = model.decode(latent)
    decode_ms = (time.perf_counter() - started) * 1000
    pixels = to_uint8(images)[0]
    buffer = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(buffer, format="PNG", compress_level=1)
    Path(out_path).write_bytes(buffer.getvalue())
    return {"path": out_path, "decode_ms": decode_ms, "bytes": buffer.tell()}
