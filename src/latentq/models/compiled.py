"""``--compile``: a model's decoder under ``torch.compile``, for a bounded set of input shapes.

Compiled with ``dynamic=False`` (static shapes give the fastest kernels), so each new latent shape is a
new compilation. The first ``limit`` shapes seen (the models file's ``warmup_shapes`` first, at worker
start) run compiled; any later shape runs the eager decoder and is counted, so that a stream of odd
sizes costs eager speed, never a compilation per job.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import torch

__all__ = ["CompiledDecoder", "compile_decoder"]

log = logging.getLogger(__name__)


class CompiledDecoder(torch.nn.Module):
    def __init__(self, eager: torch.nn.Module, limit: int) -> None:
        super().__init__()
        self.eager = eager
        self.compiled = torch.compile(eager, dynamic=False)
        self.limit = limit
        self.shapes: set[tuple] = set()
        self.eager_calls = 0  # calls past the bound, run eager
        self._unreported = 0  # of those, not yet taken by drain_eager_calls (the worker's metrics)
        self.eager_shapes: set[tuple] = set()
        self._lock = threading.Lock()
        _raise_recompile_limit(limit)

    def forward(self, sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        key = (tuple(sample.shape), sample.dtype, sample.is_contiguous(), len(args), tuple(sorted(kwargs)))
        with self._lock:
            if key not in self.shapes and len(self.shapes) >= self.limit:
                self.eager_calls += 1
                self._unreported += 1
                compiled = False
                if key not in self.eager_shapes:  # said once per shape: declare it in warmup_shapes to compile it
                    self.eager_shapes.add(key)
                    log.warning("--compile: %d shapes compiled already; decoder input %s runs eager",
                                self.limit, list(sample.shape))  # fmt: skip
            else:
                self.shapes.add(key)
                compiled = True
        return (self.compiled if compiled else self.eager)(sample, *args, **kwargs)

    def drain_eager_calls(self) -> int:
        """Eager calls since the last drain (``eager_calls`` keeps the total)."""
        with self._lock:
            calls, self._unreported = self._unreported, 0
            return calls


def _raise_recompile_limit(limit: int) -> None:
    """Dynamo's own per-function bound must not be lower than ours, or it would fall back first (silently)."""
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(int(getattr(config, name)), limit))
            break


def compile_decoder(module: torch.nn.Module, limit: int) -> CompiledDecoder:
    """Replace ``module.decoder`` (diffusers' VAEs and TAEF2 all have one) by its bounded compiled form."""
    decoder = getattr(module, "decoder", None)
    if not isinstance(decoder, torch.nn.Module):
        from ..errors import ConfigError

        raise ConfigError(f"--compile: {type(module).__name__} has no decoder module to compile")
    wrapped = CompiledDecoder(decoder, limit)
    module.decoder = wrapped
    return wrapped
