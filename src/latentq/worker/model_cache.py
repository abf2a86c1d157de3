"""The models a worker serves, held under a memory budget with least-recently-used eviction.

A worker serving more models than fit on its device keeps the most recently
used ones loaded. Before a load, the least recently used models are evicted
until the new one's size (known from an earlier load) fits; after it, until
the models held fit again (the one just loaded is never evicted: a model
larger than the budget alone is still served, one at a time). A model's size
is its parameters' and buffers' bytes, or on CUDA what ``memory_allocated``
grew by while loading, whichever is larger. Without a budget every model is
loaded once and kept, as before.

Loads and evictions are kept as events that the worker writes into the
model's metrics (``latentq_model_loads_total``, ``latentq_model_evictions_total``,
``latentq_model_load_seconds``) with its next Redis write.
"""

from __future__ import annotations

import gc
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..errors import ConfigError
from ..models.loader import LoadedModel
from ..models.registry import ModelSpec

__all__ = ["CacheEvent", "ModelCache", "module_bytes", "parse_memory"]

log = logging.getLogger("latentq.worker")

_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2, "mib": 1024**2,
          "g": 1024**3, "gb": 1024**3, "gib": 1024**3}  # fmt: skip


def parse_memory(text: str, option: str = "--model-memory-budget") -> int:
    """``"12GiB"``, ``"800MiB"``, ``"1.5G"`` or a byte count -> bytes (binary units: MB means MiB)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise ConfigError(f"{option}: not a memory size: {text!r} (use e.g. 800MiB or 12GiB)")
    value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ConfigError(f"{option} must be more than 0 bytes, not {text!r}")
    return value


def module_bytes(model: LoadedModel) -> int:
    """Bytes of the model's parameters and buffers."""
    tensors = [*model.module.parameters(), *model.module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass(frozen=True)
class CacheEvent:
    """A load (with its seconds) or an eviction of one model."""

    kind: str  # "load" or "evict"
    model: str
    seconds: float = 0.0
    eager_calls: int = 0  # an evicted --compile model's eager calls not yet reported (they would go with it)


class ModelCache:
    """Served model name -> ``LoadedModel``, loaded on demand; ``get`` marks a model most recently used.

    Iterating yields every served name (loaded or not); ``values()`` only the loaded models.
    """

    def __init__(self, specs: dict[str, ModelSpec], load: Callable[[ModelSpec], LoadedModel], *,
                 budget_bytes: int | None = None, loaded: dict[str, LoadedModel] | None = None,
                 device: str = "cpu") -> None:  # fmt: skip
        self.specs = dict(specs)
        self.device = device  # where ``load`` puts models: its CUDA memory is measured around each load
        self.budget_bytes = budget_bytes
        self._load = load
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()  # least recently used first
        self._sizes: dict[str, int] = {}
        self._events: list[CacheEvent] = []
        self._lock = threading.RLock()  # the state below: held for moments, never across a load
        self._load_lock = threading.Lock()  # one load (and its evictions) at a time
        for name, model in (loaded or {}).items():
            self._loaded[name] = model
            self._sizes[name] = module_bytes(model)

    @classmethod
    def of(cls, models: dict[str, LoadedModel]) -> ModelCache:
        """All of ``models``, loaded and kept (no budget)."""
        devices = {str(m.device) for m in models.values()}
        return cls({name: m.spec for name, m in models.items()}, _cannot_reload, loaded=models,
                   device=devices.pop() if len(devices) == 1 else "cpu")

    # --- the mapping ------------------------------------------------------------------
    def __iter__(self) -> Iterator[str]:
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)

    def __contains__(self, name: object) -> bool:
        return name in self.specs

    def __getitem__(self, name: str) -> LoadedModel:
        return self.get(name)

    def spec(self, name: str) -> ModelSpec:
        return self.specs[name]

    def values(self) -> list[LoadedModel]:
        """The models loaded now."""
        with self._lock:
            return list(self._loaded.values())

    def loaded_names(self) -> list[str]:
        """Loaded models, least recently used first."""
        with self._lock:
            return list(self._loaded)

    @property
    def bytes_loaded(self) -> int:
        with self._lock:
            return sum(self._sizes.get(name, 0) for name in self._loaded)

    # --- loading and eviction -----------------------------------------------------------
    def get(self, name: str) -> LoadedModel:
        """The model, loaded (evicting the least recently used ones as the budget needs) and marked most recent.

        The state lock is never held across a load (seconds; minutes with --compile's warm-up): the heartbeat
        and the committer read ``values()`` and ``drain_events()`` meanwhile, and a lease renewal that waited
        for a load would lapse. Loads themselves are one at a time (``_load_lock``)."""
        with self._lock:
            model = self._loaded.get(name)
            if model is not None:
                self._loaded.move_to_end(name)
                return model
        spec = self.specs[name]  # KeyError: not a model this worker serves
        with self._load_lock:
            with self._lock:  # loaded by another thread while this one waited for the load lock
                model = self._loaded.get(name)
                if model is not None:
                    self._loaded.move_to_end(name)
                    return model
            self._evict_until(self._sizes.get(name, 0), keep=name)
            model, seconds, size = self._timed_load(spec)
            with self._lock:
                self._loaded[name] = model
                self._sizes[name] = size
                self._events.append(CacheEvent("load", name, seconds))
                count = len(self._loaded)
            log.info("loaded %s in %.2f s (%.0f MiB; %d model(s) loaded)", name, seconds, size / 2**20, count)
            self._evict_until(0, keep=name)
            return model

    def preload(self) -> None:
        """Load every model in order (the last ones stay when they do not all fit): each one is checked at start."""
        for name in self.specs:
            self.get(name)

    def drain_events(self) -> list[CacheEvent]:
        with self._lock:
            events, self._events = self._events, []
            return events

    def _timed_load(self, spec: ModelSpec) -> tuple[LoadedModel, float, int]:
        import torch

        started = time.perf_counter()
        device = torch.device(self.device)
        before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        model = self._load(spec)
        measured = 0
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            measured = torch.cuda.memory_allocated(device) - before
        return model, time.perf_counter() - started, max(module_bytes(model), measured)

    def _evict_until(self, incoming: int, *, keep: str) -> None:
        """Evict least recently used models (never ``keep``) until the loaded ones plus ``incoming`` fit.

        A victim's last batch may still be running: ``decode_group`` returns once its GPU work is queued. Its
        streams are synchronized before it is dropped, or the next load (on the default stream) could be given
        the memory of weights a queued kernel has yet to read. Called with ``_load_lock`` held."""
        if self.budget_bytes is None:
            return
        evicted = False
        while True:
            with self._lock:
                if self.bytes_loaded + incoming <= self.budget_bytes:
                    break
                victim = next((name for name in self._loaded if name != keep), None)
                if victim is None:
                    break
                model = self._loaded.pop(victim)
            _wait_for_device_work(model)
            compiled = getattr(model, "compiled", None)
            event = CacheEvent("evict", victim, eager_calls=compiled.drain_eager_calls() if compiled else 0)
            del model, compiled  # the last reference: _release_memory() can free its weights
            with self._lock:
                self._events.append(event)
            log.info("evicted %s (least recently used) to fit the %.0f MiB model budget", victim,
                     self.budget_bytes / 2**20)  # fmt: skip
            evicted = True
        if evicted:
            _release_memory()


def _wait_for_device_work(model: LoadedModel) -> None:
    path = getattr(model, "path", None)
    if path is not None:
        path.synchronize()


def _cannot_reload(spec: ModelSpec) -> LoadedModel:
    raise ConfigError(f"model {spec.name} is not loaded and this cache has no loader")


def _release_memory() -> None:
    """Hand an evicted model's memory back (its tensors go with the last reference)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
