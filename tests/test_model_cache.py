"""Several models per device under a memory budget (least recently used evicted), and --device cuda:all."""

from __future__ import annotations

import dataclasses
import json

import httpx
import numpy as np
import pytest
import torch
from helpers import decode_png, reference_pixels
from test_observability import metric

from latentq import Client
from latentq.cli.worker import _with_device, expand_devices
from latentq.errors import ConfigError
from latentq.models.loader import LoadedModel, load_model
from latentq.models.registry import load_registry
from latentq.worker.model_cache import ModelCache, module_bytes, parse_memory

pytestmark = pytest.mark.timeout(180)


def _spec(name: str):
    return dataclasses.replace(load_registry(None).get("sd15"), name=name)


def _loader(sizes: dict[str, int], calls: list[str]):
    """Real LoadedModels whose module holds ``sizes[name]`` float32 parameters."""

    def load(spec) -> LoadedModel:
        calls.append(spec.name)
        module = torch.nn.Linear(sizes[spec.name], 1, bias=False)
        return LoadedModel(spec, module, torch.device("cpu"), torch.float32)

    return load


def test_a_load_does_not_hold_the_lock_the_heartbeat_and_committer_read_under():
    """A slow load (minutes with --compile) must not stall values() / drain_events(): leases would lapse."""
    import threading

    from latentq.worker.model_cache import CacheEvent

    read_during_load = threading.Event()
    reads: list = []

    def slow_load(spec) -> LoadedModel:
        reader = threading.Thread(target=lambda: (reads.extend([cache.values(), cache.drain_events(),
                                                               cache.loaded_names(), cache.bytes_loaded]),
                                                  read_during_load.set()))  # fmt: skip
        reader.start()
        # The reader finishes only if the cache's lock is free during this load (else: this test times out).
        assert read_during_load.wait(30), "values()/drain_events() waited for the load"
        return LoadedModel(spec, torch.nn.Linear(4, 1, bias=False), torch.device("cpu"), torch.float32)

    cache = ModelCache({"a": _spec("a")}, slow_load, budget_bytes=10**6)
    cache.get("a")
    assert reads == [[], [], [], 0]
    assert [event.kind for event in cache.drain_events()] == ["load"] and isinstance(CacheEvent, type)


def test_eviction_waits_for_the_victims_streams_and_drops_its_last_reference():
    """The victim's queued GPU work (fake streams here) is waited for before the next load can take its memory."""
    import gc
    import weakref

    from latentq.models.device_path import DevicePath, PinnedPool, Streams

    log: list = []

    class LoggingStream:
        def __init__(self, name: str) -> None:
            self.name = name

        def record_event(self, event=None):
            raise AssertionError("not used here")

        def wait_event(self, event) -> None:
            pass

        def synchronize(self) -> None:
            log.append(("synchronize", self.name))

    def load(spec) -> LoadedModel:
        log.append(("load", spec.name))
        model = LoadedModel(spec, torch.nn.Linear(1000, 1, bias=False), torch.device("cpu"), torch.float32)
        streams = Streams(*(LoggingStream(f"{spec.name}.{stage}") for stage in ("in", "compute", "out")))
        model.path = DevicePath(torch.device("cpu"), staged=True, streams=streams, pool=PinnedPool(enabled=False))
        return model

    cache = ModelCache({n: _spec(n) for n in "ab"}, load, budget_bytes=5000)  # one 4000-byte model at a time
    victim = weakref.ref(cache.get("a").module)
    cache.get("b")  # b's size is not known yet: loaded first, then a is evicted (its memory not reused before)
    gc.collect()
    assert log == [("load", "a"), ("load", "b"),
                   ("synchronize", "a.in"), ("synchronize", "a.compute"), ("synchronize", "a.out")]  # fmt: skip
    assert victim() is None, "the evicted model is still referenced"
    log.clear()
    cache.get("a")  # a's size is known: b is evicted (its streams waited for) before a is loaded
    assert log == [("synchronize", "b.in"), ("synchronize", "b.compute"), ("synchronize", "b.out"), ("load", "a")]
    assert cache.loaded_names() == ["a"]


def test_parse_memory():
    assert parse_memory("800MiB") == 800 * 2**20
    assert parse_memory("1.5GiB") == int(1.5 * 2**30)
    assert parse_memory("12g") == 12 * 2**30
    assert parse_memory("4096") == 4096
    for bad in ("lots", "12 parsecs", "0", ""):
        with pytest.raises(ConfigError, match="--model-memory-budget"):
            parse_memory(bad)


def test_least_recently_used_model_is_evicted_and_reloaded_on_demand():
    sizes = {"a": 1000, "b": 1000, "c": 1000}  # 4000 bytes each; the budget holds two
    calls: list[str] = []
    cache = ModelCache({n: _spec(n) for n in sizes}, _loader(sizes, calls), budget_bytes=9000)
    cache.preload()
    assert cache.loaded_names() == ["b", "c"] and calls == ["a", "b", "c"]
    assert cache.bytes_loaded == 8000 == module_bytes(cache["b"]) * 2
    cache.get("b")  # b is now the most recently used: loading a evicts c
    cache.get("a")
    assert cache.loaded_names() == ["b", "a"] and calls[-1] == "a"
    assert cache.get("b") is cache.get("b") and calls.count("b") == 1  # loaded ones are not loaded again
    events = cache.drain_events()
    assert [(e.kind, e.model) for e in events] == [
        ("load", "a"), ("load", "b"), ("load", "c"), ("evict", "a"), ("evict", "c"), ("load", "a"),
    ]  # fmt: skip
    assert all(e.seconds >= 0 for e in events) and cache.drain_events() == []
    assert sorted(cache) == ["a", "b", "c"] and cache.spec("c").name == "c"  # served, loaded or not
    assert [m.spec.name for m in cache.values()] == ["a", "b"]  # b was used last


class _CountingDecoder:
    """What the cache reads of a --compile model's CompiledDecoder: its unreported eager calls."""

    def __init__(self, calls: int) -> None:
        self.calls = calls

    def drain_eager_calls(self) -> int:
        calls, self.calls = self.calls, 0
        return calls


def test_an_evicted_compiled_model_hands_over_its_unreported_eager_calls():
    sizes = {"a": 1000, "b": 1000}  # the budget holds one
    cache = ModelCache({n: _spec(n) for n in sizes}, _loader(sizes, []), budget_bytes=5000)
    cache.get("a").compiled = _CountingDecoder(3)
    cache.get("b")  # evicts a, whose 3 eager calls would otherwise go with it
    evicted = [e for e in cache.drain_events() if e.kind == "evict"]
    assert [(e.model, e.eager_calls) for e in evicted] == [("a", 3)]


def test_a_model_larger_than_the_budget_is_still_served_alone():
    sizes = {"small": 10, "huge": 10_000}
    calls: list[str] = []
    cache = ModelCache({n: _spec(n) for n in sizes}, _loader(sizes, calls), budget_bytes=1000)
    cache.get("small")
    cache.get("huge")
    assert cache.loaded_names() == ["huge"]
    cache.get("small")  # huge's known size no longer fits beside it: evicted before the load
    assert cache.loaded_names() == ["small"]


def test_without_a_budget_every_model_stays():
    sizes = {"a": 1000, "b": 1000}
    calls: list[str] = []
    cache = ModelCache({n: _spec(n) for n in sizes}, _loader(sizes, calls))
    for name in ["a", "b", "a", "b"]:
        cache.get(name)
    assert calls == ["a", "b"] and cache.loaded_names() == ["a", "b"]


def test_device_expansion(monkeypatch):
    assert expand_devices("cpu") == ["cpu"] and expand_devices("cuda:1") == ["cuda:1"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert expand_devices("cuda:all") == ["cuda:0", "cuda:1", "cuda:2"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ConfigError, match="--device cuda:all: no CUDA device"):
        expand_devices("cuda:all")


def test_each_device_worker_gets_its_device_and_name():
    argv = ["--log-level", "INFO", "worker", "--device", "cuda:all", "--model", "sd15", "--name=w"]
    assert _with_device(argv, "cuda:1", "w") == [
        "--log-level", "INFO", "worker", "--model", "sd15", "--device", "cuda:1", "--name", "w-cuda1",
    ]  # fmt: skip
    assert _with_device(["worker", "--device=cuda:all"], "cuda:0", None) == ["worker", "--device", "cuda:0"]


def test_cuda_all_without_a_gpu_is_a_clear_error(procs):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    for command in (["worker"], ["up", "--port", "0"]):
        process = procs.spawn(*command, "--device", "cuda:all", name=command[0])
        assert process.wait(60) == 2
        with open(process.log_path) as log:
            assert "ConfigError: --device cuda:all: no CUDA device is visible" in log.read()


def test_two_models_alternating_under_a_budget_that_fits_one(procs, tmp_path, models_file):
    from tiny_configs import CONFIGS

    (tmp_path / "sd15.json").write_text(json.dumps(dict(CONFIGS["sd15"], sample_size=64)))
    models_file.write_text(models_file.read_text() + '\n[models.sd15]\nconfig = "sd15.json"\n')
    registry = load_registry(models_file)
    local = {name: load_model(registry.get(name)) for name in ("taef2", "sd15")}
    sizes = sorted(module_bytes(model) for model in local.values())
    budget = sizes[1] + sizes[0] // 2  # the larger fits, not both
    procs.worker("taef2", "sd15", extra=("--no-previews", "--model-memory-budget", str(budget)))
    api = procs.api()
    client = Client()
    latents = {"taef2": torch.randn(32, 4, 4), "sd15": torch.randn(4, 8, 8)}
    for name in ["taef2", "sd15", "taef2", "sd15"]:  # each job waits for the last: every one is a switch
        job = client.submit(latents[name], model=name)
        job.wait(60)
        got = decode_png(job.read()).astype(int)
        assert np.abs(got - reference_pixels(local[name], latents[name]).astype(int)).max() <= 1, name
    text = httpx.get(f"{api}/metrics").text
    # Start: taef2 loaded, then sd15 (taef2 evicted); then each job loads its model and evicts the other.
    assert metric(text, "latentq_model_loads_total", model="taef2") == 3
    assert metric(text, "latentq_model_loads_total", model="sd15") == 3
    assert metric(text, "latentq_model_evictions_total", model="taef2") == 3
    assert metric(text, "latentq_model_evictions_total", model="sd15") == 2
    assert metric(text, "latentq_model_load_seconds_count", model="sd15") == 3
    assert metric(text, "latentq_model_load_seconds_sum", model="taef2") > 0
