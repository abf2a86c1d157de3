"""``--compile``: a model's decoder under ``torch.compile``, for a bounded set of input shapes.

Compiled with ``dynamic=False`` (static shapes give the fastest kernels), so each new latent shape is a
new compilation. The first ``limit`` shapes seen (the models file's ``warmup_shapes``, compiled at worker
start) run compiled; any later shape runs the eager decoder and is counted, so that a stream of odd
sizes costs eager speed, never a compilation per job.

Dynamo bounds recompilations per code object, not per model: every ``AutoencoderKL`` of a process shares
``Decoder.forward``. The bound is raised to the sum of the limits of every decoder sharing that code (with
slack for guards other than shapes), and where dynamo would still give up it raises instead of silently
running eager (``fail_on_recompile_limit_hit``): the call then runs eager here and is counted as such.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import torch

from ..errors import ConfigError

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
        _reserve_recompiles(eager, limit)

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
                if key not in self.shapes and self.shapes:
                    log.info("--compile: compiling decoder input %s on the decode thread (declare it in "
                             "warmup_shapes to compile it at start)", list(sample.shape))  # fmt: skip
                self.shapes.add(key)
                compiled = True
        if not compiled:
            return self.eager(sample, *args, **kwargs)
        try:
            return self.compiled(sample, *args, **kwargs)
        except _RECOMPILE_LIMIT_HIT:  # dynamo's own bound reached after all: eager, and counted as eager
            with self._lock:
                self.shapes.discard(key)
                self.eager_calls += 1
                self._unreported += 1
            log.warning("--compile: dynamo's recompile limit reached; decoder input %s runs eager", list(sample.shape))
            return self.eager(sample, *args, **kwargs)

    def drain_eager_calls(self) -> int:
        """Eager calls since the last drain (``eager_calls`` keeps the total)."""
        with self._lock:
            calls, self._unreported = self._unreported, 0
            return calls


GUARD_SLACK = 2  # recompilations per shape dynamo may need besides the shape (grad mode, dtype, strides)
_reserved: dict[Any, int] = {}  # a decoder class's forward code -> the shapes reserved over all its instances
_reserved_lock = threading.Lock()
_RECOMPILE_LIMIT_HIT: tuple[type[BaseException], ...] = tuple(
    exc for exc in (getattr(torch._dynamo.exc, "FailOnRecompileLimitHit", None),) if exc is not None)


def _reserve_recompiles(eager: torch.nn.Module, limit: int) -> None:
    """Raise dynamo's bounds (per code object, and accumulated) to what every compiled decoder may need."""
    code = getattr(type(eager).forward, "__code__", type(eager))
    with _reserved_lock:
        _reserved[code] = _reserved.get(code, 0) + limit
        per_code = max(_reserved.values()) * GUARD_SLACK
        accumulated = sum(_reserved.values()) * GUARD_SLACK
    config = torch._dynamo.config
    for name, needed in (("recompile_limit", per_code), ("cache_size_limit", per_code),
                         ("accumulated_recompile_limit", accumulated), ("accumulated_cache_size_limit", accumulated)):
        if hasattr(config, name):
            setattr(config, name, max(int(getattr(config, name)), needed))
    if hasattr(config, "fail_on_recompile_limit_hit"):
        config.fail_on_recompile_limit_hit = True


def compile_decoder(module: torch.nn.Module, limit: int) -> CompiledDecoder:
    """Replace ``module.decoder`` (diffusers' VAEs and TAEF2 all have one) by its bounded compiled form."""
    decoder = getattr(module, "decoder", None)
    if not isinstance(decoder, torch.nn.Module):

        raise ConfigError(f"--compile: {type(module).__name__} has no decoder module to compile")
    wrapped = CompiledDecoder(decoder, limit)
    module.decoder = wrapped
    return wrapped
