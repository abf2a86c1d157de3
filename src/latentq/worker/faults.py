"""Fault injection for tests of the worker's failure paths (CPU has no real OOM to provoke).

Off unless ``LATENTQ_FAULTS`` holds a JSON object, for example
``{"decode_delay_s": 1.0, "oom_batch_above": 2}``:

- ``decode_delay_s``: sleep before each full decode call, i.e. once per batch whatever its size (makes
  previews observable). It is also the simulated GPU of ``bench/scaleout.py``: a benchmark tool, not a
  feature. There the model is a diffusers ``AutoencoderTiny`` shrunk until its decode costs about a
  millisecond of CPU per batch, so a batch takes this sleep (no CPU, as a GPU kernel leaves the host
  free) and everything around it is latentq's real path: pops, leases, starts, encode, store, commits;
- ``oom_batch_above``: a decode of more than N latents raises an out-of-memory error;
- ``oom_untiled_pixels_above``: an untiled decode of more than N output pixels per sample raises it too;
- ``store_failures``: the first N store writes of this process raise a transient error.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import torch

from ..config import faults_from_env

__all__ = ["FAULTS_ENV", "Faults"]

FAULTS_ENV = "LATENTQ_FAULTS"


@dataclass
class Faults:
    decode_delay_s: float = 0.0
    oom_batch_above: int | None = None
    oom_untiled_pixels_above: int | None = None
    store_failures: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> Faults:
        return cls(**faults_from_env())

    def before_decode(self, batch: int, pixels_per_sample: int, tiled: bool) -> None:
        if self.decode_delay_s:
            time.sleep(self.decode_delay_s)
        if self.oom_batch_above is not None and batch > self.oom_batch_above:
            raise torch.OutOfMemoryError(f"injected: CUDA out of memory (batch of {batch})")
        if self.oom_untiled_pixels_above is not None and not tiled and pixels_per_sample > self.oom_untiled_pixels_above:
            raise torch.OutOfMemoryError(f"injected: CUDA out of memory ({pixels_per_sample} pixels untiled)")

    def before_store(self) -> None:
        with self._lock:
            if self.store_failures <= 0:
                return
            self.store_failures -= 1
        raise ConnectionError("injected: store write failed")
