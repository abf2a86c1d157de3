"""The device-resident decode path (models/device_path.py), --channels-last and --compile, the JPEG encoder choice.

This machine has no GPU: the CUDA-only parts run through the same functions with fakes (streams and events
that record what they are asked) and ``torch.cuda.is_available`` mocked only for the pinned pool's bookkeeping.
"""

from __future__ import annotations

import dataclasses
import io
import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from latentq.core.request import DecodeRequest
from latentq.errors import ConfigError
from latentq.models import loader
from latentq.models.device_path import DevicePath, Pending, PinnedPool, Streams, unit_to_uint8
from latentq.models.loader import load_model, to_uint8
from latentq.models.modelspec import ModelSpec
from latentq.models.registry import load_registry
from latentq.worker.encode import _image_bytes, encode_output, gpu_jpeg_available, jpeg_encoder
from latentq.worker.pipeline import decode_group, store_output


# --- fakes ---------------------------------------------------------------------------------
class FakeEvent:
    def __init__(self, name: str) -> None:
        self.name = name
        self.finished = False
        self.synchronized = False

    def query(self) -> bool:
        return self.finished

    def synchronize(self) -> None:
        self.synchronized = self.finished = True


class FakeStream:
    """Records the handoffs it is asked for, in one log shared by the three stages."""

    def __init__(self, name: str, log: list) -> None:
        self.name = name
        self.log = log
        self.events: list[FakeEvent] = []

    def record_event(self, event=None) -> FakeEvent:
        event = FakeEvent(f"{self.name}{len(self.events)}")
        self.events.append(event)
        self.log.append(("record", self.name, event.name))
        return event

    def wait_event(self, event: FakeEvent) -> None:
        self.log.append(("wait", self.name, event.name))


def plain(shape, dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype)


def fake_path() -> tuple[DevicePath, list, Streams]:
    log: list = []
    streams = Streams(FakeStream("in", log), FakeStream("compute", log), FakeStream("out", log))
    return DevicePath(torch.device("cpu"), staged=True, streams=streams,
                      pool=PinnedPool(enabled=True, allocate=plain)), log, streams  # fmt: skip


def tiny_taef2(**kwargs):
    spec = dataclasses.replace(load_registry(None).get("taef2"), source=None, config={}, **kwargs.pop("spec", {}))
    return load_model(spec, "cpu", **kwargs)


# --- uint8 on the device ------------------------------------------------------------------
HALVES = st.integers(-20, 530).map(lambda k: k / 510)  # (k/2)/255: the .5 boundaries of the rounding
VALUES = st.one_of(st.floats(-3, 4, width=32), HALVES, st.sampled_from([0.0, -0.0, 1.0, float("inf"), -float("inf")]))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 2), st.integers(1, 4), st.integers(1, 5), st.booleans(), st.data())
def test_uint8_on_the_device_equals_to_uint8(batch, height, width, video, data):
    shape = (batch, 3, 2, height, width) if video else (batch, 3, height, width)
    count = int(np.prod(shape))
    values = data.draw(st.lists(VALUES, min_size=count, max_size=count))
    images = torch.tensor(values, dtype=torch.float32).reshape(shape)
    want = to_uint8(images)
    got = unit_to_uint8(images)
    assert got.dtype == torch.uint8 and got.shape == want.shape and got.is_contiguous()
    assert torch.equal(got, want)
    assert torch.equal(DevicePath(torch.device("cpu")).to_uint8(images), want)


def test_rounding_is_half_to_even_like_vae_image_processor():
    # x * 255 exactly 0.5, 1.5, 2.5 (float32): numpy's round, as VaeImageProcessor.numpy_to_pil.
    images = torch.tensor([0.5, 1.5, 2.5, 254.5], dtype=torch.float32).div(255)
    products = images * 255
    expected = np.round(products.numpy()).astype(np.uint8)
    got = unit_to_uint8(images.reshape(1, 1, 1, 4).expand(1, 3, 1, 4).contiguous())[0, 0, :, 0]
    assert got.tolist() == expected.tolist()


# --- the pinned pool ------------------------------------------------------------------------
def test_pool_without_cuda_hands_out_plain_buffers_and_keeps_none():
    assert not torch.cuda.is_available()
    pool = PinnedPool()
    assert not pool.enabled
    buffer = pool.acquire((2, 3), torch.float16)
    assert buffer.shape == (2, 3) and buffer.dtype == torch.float16 and not buffer.is_pinned()
    pool.release(buffer)
    assert pool.free_count((2, 3), torch.float16) == 0 and pool.allocated == 0


def test_pool_reuses_by_shape_and_dtype_within_its_bound(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the bookkeeping only: buffers stay plain
    pool = PinnedPool(per_key=2, max_bytes=3 * 64, allocate=plain)
    assert pool.enabled
    first = pool.acquire((4, 4), torch.float32)  # 64 bytes
    pool.release(first)
    again = pool.acquire((4, 4), torch.float32)
    assert again is first and (pool.allocated, pool.reused) == (1, 1)
    other = pool.acquire((4, 4), torch.float16)  # another dtype: another buffer
    assert other is not first and pool.allocated == 2
    buffers = [again] + [pool.acquire((4, 4), torch.float32) for _ in range(2)]
    for buffer in buffers:
        pool.release(buffer)
    assert pool.free_count((4, 4), torch.float32) == 2 and pool.dropped == 1  # per_key
    pool.release(other)  # 32 bytes: 160 <= 192
    big = pool.acquire((8, 8), torch.float32)  # 256 bytes: over max_bytes, never kept
    pool.release(big)
    assert pool.free_count((8, 8), torch.float32) == 0 and pool.dropped == 2
    assert pool.held_bytes == 2 * 64 + 32


def test_pool_reuses_a_buffer_only_after_its_copy_has_read_it():
    pool = PinnedPool(enabled=True, allocate=plain)
    buffer = pool.acquire((3,), torch.float32)
    copied = FakeEvent("copy")
    pool.release(buffer, after=copied)
    assert pool.free_count((3,), torch.float32) == 0
    assert pool.acquire((3,), torch.float32) is not buffer
    copied.finished = True
    assert pool.free_count((3,), torch.float32) == 1
    assert pool.acquire((3,), torch.float32) is buffer


# --- stream handoff -------------------------------------------------------------------------
def test_copy_in_hands_over_to_compute_and_returns_the_staging_buffer():
    path, log, streams = fake_path()
    latents = torch.randn(2, 4, 3, 3, dtype=torch.float16)
    moved = path.to_device(latents, torch.float32)
    assert moved.dtype == torch.float32 and torch.equal(moved, latents.float())
    assert log == [("record", "in", "in0"), ("wait", "compute", "in0")]
    assert path.pool.free_count(latents.shape, latents.dtype) == 0  # the copy may still be reading it
    streams.copy_in.events[0].finished = True
    assert path.pool.free_count(latents.shape, latents.dtype) == 1
    again = path.to_device(latents * 2, torch.float32)
    assert path.pool.reused == 1 and torch.equal(again, (latents * 2).float())
    assert torch.equal(moved, latents.float())  # the first result is not an alias of the reused buffer


def test_copy_out_waits_for_compute_and_the_reader_waits_for_the_copy():
    path, log, streams = fake_path()
    pixels = unit_to_uint8(torch.rand(2, 3, 4, 4))
    pending = path.to_host(pixels)
    assert log == [("record", "compute", "compute0"), ("wait", "out", "compute0"), ("record", "out", "out0")]
    assert not pending.done
    host = pending.wait()
    assert streams.copy_out.events[0].synchronized and pending.done
    assert torch.equal(host, pixels) and host.data_ptr() != pixels.data_ptr()
    kept = path.on_device(pixels)  # left where it is (nvJPEG): ready when compute has made it
    assert log[-1] == ("record", "compute", "compute1") and kept.wait() is pixels


def test_the_cpu_path_is_plain_and_synchronous():
    path = DevicePath(torch.device("cpu"))
    assert not path.staged and not path.pool.enabled
    latents = torch.randn(1, 4, 2, 2, dtype=torch.float16)
    assert torch.equal(path.to_device(latents, torch.float32), latents.float())
    tensor = torch.rand(1, 3, 2, 2)
    pending = path.to_host(tensor)
    assert pending.done and pending.wait() is tensor
    assert path.timer().start().stop().ms() >= 0


def test_a_worker_decode_through_fake_streams_equals_the_in_process_decode():
    model = tiny_taef2()
    latents = [torch.randn(1, 32, 4, 4) for _ in range(2)]
    want = to_uint8(model.decode(torch.cat(latents)))
    model.path, log, streams = fake_path()
    requests = [DecodeRequest(model="taef2", output_format="png"), DecodeRequest(model="taef2", output_format="png")]
    decoded = decode_group(model, requests, latents)
    assert ("wait", "compute", "in0") in log and ("wait", "out", "compute0") in log
    assert not streams.copy_out.events[0].synchronized  # nothing waited for the copy yet
    for i, item in enumerate(decoded):
        assert torch.equal(item.pixels, want[i])
        with pytest.raises(ValueError, match="no float pixels"):
            item.image  # png needs no float copy: none was made
    assert streams.copy_out.events[0].synchronized and len(streams.copy_out.events) == 1
    assert decoded[0].decode_ms >= 0 and decoded[0].batch_size == 2


def test_a_tensor_request_gets_its_float_pixels_too(tmp_path):
    from latentq.store.local import LocalStore

    model = tiny_taef2()
    latent = torch.randn(1, 32, 4, 4)
    request = DecodeRequest(model="taef2", output_format="tensor")
    (decoded,) = decode_group(model, [request], [latent])
    expected = model.decode(latent)[0]
    assert torch.equal(decoded.image, expected) and torch.equal(decoded.pixels, to_uint8(expected[None])[0])
    (record,) = store_output(LocalStore(tmp_path), "job", request, decoded)
    assert record["content_type"] == "application/vnd.safetensors"
    with pytest.raises(ValueError, match="float pixels"):
        encode_output(None, decoded.pixels, request)


def test_a_preview_is_uint8_only_and_stores_as_a_still(tmp_path):
    from latentq.store.local import LocalStore
    from latentq.worker.pipeline import decode_preview

    model = tiny_taef2()
    latent = torch.randn(1, 32, 4, 4)
    request = DecodeRequest(model="taef2", output_format="tensor", preview=True)
    (decoded,) = decode_preview(model, model, [request], [latent])
    assert torch.equal(decoded.pixels, to_uint8(model.preview(model, latent))[0])
    with pytest.raises(ValueError, match="no float pixels"):
        decoded.image
    (record,) = store_output(LocalStore(tmp_path), "job", request, decoded, preview=True)
    assert record["content_type"] == "image/jpeg" and record["width"] == decoded.pixels.shape[1]


# --- channels_last and compile ---------------------------------------------------------------
def test_channels_last_decodes_what_the_default_layout_does():
    eager = tiny_taef2(channels_last=False)
    nhwc = tiny_taef2()  # auto: on for the CPU too
    assert nhwc.channels_last and not eager.channels_last
    assert nhwc.module.decoder.layers[0].weight.is_contiguous(memory_format=torch.channels_last)
    latent = torch.randn(2, 32, 4, 4)
    assert (to_uint8(nhwc.decode(latent)).int() - to_uint8(eager.decode(latent)).int()).abs().max() <= 1


def test_channels_last_is_never_applied_to_3d_convolutions(monkeypatch):
    class WithConv3d(loader.TAEF2):  # a model with a 3-D convolution, as the video VAEs have
        def __init__(self) -> None:
            super().__init__()
            self.temporal = torch.nn.Conv3d(3, 3, 1)

    monkeypatch.setattr(loader, "TAEF2", WithConv3d)
    model = tiny_taef2(channels_last=True)
    assert not model.channels_last
    assert model.module.decoder.layers[0].weight.is_contiguous()  # left in the default layout


def test_warmup_shapes_from_a_models_file(tmp_path):
    models = tmp_path / "models.toml"
    models.write_text('[models.taef2]\nwarmup_shapes = [[1, 32, 8, 8], [4, 32, 8, 8]]\n')
    assert load_registry(models).get("taef2").warmup_shapes == ((1, 32, 8, 8), (4, 32, 8, 8))


def test_warmup_shapes_in_a_spec():
    spec = dataclasses.replace(load_registry(None).get("taef2"), warmup_shapes=[[1, 32, 8, 8], [2, 32, 8, 8]])
    assert spec.warmup_shapes == ((1, 32, 8, 8), (2, 32, 8, 8))
    for bad in ([[1, 32, 8]], [[1, 32, 0, 8]], [["a"]], 5):
        with pytest.raises(ConfigError, match="warmup_shapes"):
            ModelSpec(name="x", loader="taef2", latent_channels=32, config={}, warmup_shapes=bad)


def test_compile_bounds_are_summed_over_decoders_sharing_code_and_a_refused_call_runs_eager(monkeypatch):
    """Every AutoencoderKL shares Decoder.forward: dynamo's per-code bound must cover all of their shapes."""
    import torch._dynamo.config as dynamo_config

    from latentq.models import compiled as compiled_module
    from latentq.models.compiled import CompiledDecoder

    monkeypatch.setattr(compiled_module, "_reserved", {})
    names = ("recompile_limit", "accumulated_recompile_limit", "fail_on_recompile_limit_hit")
    saved = {name: getattr(dynamo_config, name) for name in names}
    try:
        decoders = [CompiledDecoder(torch.nn.Conv2d(2, 2, 1), limit=6) for _ in range(3)]  # three models, one class
        assert dynamo_config.recompile_limit >= 3 * 6
        assert dynamo_config.accumulated_recompile_limit >= 3 * 6
        assert dynamo_config.fail_on_recompile_limit_hit is True  # refused loudly, never eager in silence
    finally:
        for name, value in saved.items():
            setattr(dynamo_config, name, value)

    class Refuses(torch.nn.Module):
        def forward(self, *args, **kwargs):
            raise compiled_module._RECOMPILE_LIMIT_HIT[0]("recompile limit hit")

    wrapper = decoders[0]
    wrapper.compiled = Refuses()
    sample = torch.randn(1, 2, 3, 3)
    assert torch.equal(wrapper(sample), wrapper.eager(sample))
    assert wrapper.eager_calls == 1 and wrapper.drain_eager_calls() == 1 and not wrapper.shapes


def test_config_constants_are_built_once_per_device_and_dtype():
    """Wan's mean/std were a pageable host copy on every decode (a stall of the compute stream on CUDA)."""
    model = tiny_taef2()
    builds: list[int] = []

    def build() -> torch.Tensor:
        builds.append(1)
        return torch.tensor([0.5, 0.25])

    like = torch.zeros(1)
    first = model.device_constant(("k",), like, build)
    assert model.device_constant(("k",), like, build) is first and len(builds) == 1
    half = model.device_constant(("k",), like.half(), build)
    assert half.dtype == torch.float16 and len(builds) == 2 and torch.equal(half.float(), first)


def _can_compile() -> bool:
    return hasattr(torch, "compile") and bool(shutil.which("gcc") or shutil.which("cc"))


@pytest.mark.skipif(not _can_compile(), reason="torch.compile or a C compiler is missing")
@pytest.mark.integration  # inductor compiles in worker processes
@pytest.mark.timeout(600)
def test_compiled_decoder_matches_eager_and_bounds_its_shapes(monkeypatch):
    monkeypatch.setattr(loader, "COMPILE_LIMIT", 1)
    eager = tiny_taef2()
    compiled = tiny_taef2(compile=True, spec={"warmup_shapes": ((1, 32, 4, 4),)})
    wrapper = compiled.compiled
    assert wrapper is not None and len(wrapper.shapes) == 1 and wrapper.eager_calls == 0  # warmed up at load
    latent = torch.randn(1, 32, 4, 4)
    got, want = compiled.decode(latent), eager.decode(latent)
    assert (got - want).abs().max().item() <= 1 / 255
    assert len(wrapper.shapes) == 1 and wrapper.eager_calls == 0  # the warmed-up shape: no new compilation
    other = torch.randn(1, 32, 3, 5)  # past the bound of 1 shape: eager, counted
    assert torch.allclose(compiled.decode(other), eager.decode(other), atol=1e-6)
    assert len(wrapper.shapes) == 1 and wrapper.eager_calls == 1


# --- JPEG encoder choice --------------------------------------------------------------------------
def test_jpeg_on_the_cpu_is_pillows():
    pixels = unit_to_uint8(torch.rand(1, 3, 16, 24))[0]
    assert isinstance(gpu_jpeg_available(), bool)
    assert jpeg_encoder(pixels) == "pillow"
    buffer = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(buffer, format="JPEG", quality=77)
    assert _image_bytes(pixels, "jpeg", 77) == buffer.getvalue()
    (encoded,) = encode_output(None, pixels, DecodeRequest(model="taef2", output_format="jpeg", quality=77))
    assert encoded.data == buffer.getvalue()


def _pillow_jpeg(image: torch.Tensor, quality: int = 75) -> torch.Tensor:
    """torchvision.io.encode_jpeg's contract ((3, H, W) uint8 -> 1-D uint8 bytes), by Pillow: a working encoder."""
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="JPEG", quality=quality)
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


def _import_fails():
    raise RuntimeError("operator torchvision::nms does not exist")  # torchvision built for another torch


def _no_nvjpeg(image: torch.Tensor, quality: int = 75) -> torch.Tensor:
    raise RuntimeError("encode_jpeg: torchvision not compiled with nvJPEG support")


@pytest.mark.parametrize("load, works", [
    (lambda: _pillow_jpeg, True),
    (_import_fails, False),  # the import itself fails
    (lambda: _no_nvjpeg, False),  # imports, has encode_jpeg (hasattr said yes), every call fails
    (lambda: (lambda image, quality=75: torch.zeros(4, dtype=torch.uint8)), False),  # returns no JPEG
], ids=["works", "mismatched-torchvision", "built-without-nvjpeg", "not-a-jpeg"])  # fmt: skip
def test_the_gpu_jpeg_encoder_is_probed_with_a_real_encode_and_falls_back(load, works, caplog):
    from latentq.worker.encode import probe_jpeg_encoder

    encoder = probe_jpeg_encoder(load, "cpu")
    assert (encoder is not None) is works
    if not works:
        assert "encoded by Pillow" in caplog.text


def test_pending_of_a_finished_tensor():
    tensor = torch.zeros(2)
    assert Pending(tensor).done and Pending(tensor).wait() is tensor


def test_worker_and_up_flags_reach_load_model_and_the_workers():
    from latentq.cli import build_parser
    from latentq.cli.worker import gpu_flags as _gpu_flags
    from latentq.cli.worker import gpu_options as _gpu_options

    parser = build_parser()
    args = parser.parse_args(["worker", "--compile", "--channels-last", "on"])
    assert _gpu_options(args) == {"channels_last": True, "compile": True}
    assert _gpu_options(parser.parse_args(["worker"])) == {"channels_last": None, "compile": False}
    up = parser.parse_args(["up", "--channels-last", "off", "--compile"])
    assert _gpu_flags(up) == ("--channels-last", "off", "--compile")
    assert _gpu_options(parser.parse_args(["worker", *_gpu_flags(up)])) == {"channels_last": False, "compile": True}


# --- on a CUDA device (skipped here: this machine has none) -------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_the_staged_path_on_cuda_matches_the_eager_decode_of_the_same_dtype(dtype):
    spec = dataclasses.replace(load_registry(None).get("taef2"), source=None, config={})
    model = load_model(spec, "cuda", dtype)
    assert model.path.staged and model.path.pool.enabled and model.channels_last
    latents = [torch.randn(1, 32, 8, 8) for _ in range(3)]
    with torch.inference_mode():  # the reference: the module's own decode, float32 [0, 1] on the CPU
        raw = model.module.decode(torch.cat(latents).to("cuda", model.dtype)).float().clamp(0, 1).cpu()
    want = to_uint8(raw)
    for _ in range(2):  # the second decode reuses the first's staging buffer
        requests = [DecodeRequest(model="taef2", output_format="png")] * 2 + [DecodeRequest(model="taef2",
                                                                                           output_format="tensor")]
        decoded = decode_group(model, requests, latents)
        for i, item in enumerate(decoded):
            assert item.pixels.device.type == "cpu"
            assert (item.pixels.int() - want[i].int()).abs().max() <= 1
        assert (decoded[2].image - raw[2]).abs().max() <= (1 if dtype == "float32" else 2) / 255
        assert decoded[0].decode_ms > 0
    assert model.path.pool.reused >= 1
