"""MP4s encoded while their video decodes (issue 15): chunked decodes, the incremental MP4 writer, frame
streams, and the worker's streamed path end to end (real tiny diffusers VAEs, real Redis, real x264)."""

from __future__ import annotations

import dataclasses
import io
import logging
import threading

import av
import numpy as np
import pytest
import torch
from pipelines_video import BUILDERS
from tiny_configs import CONFIGS

from latentq import Client
from latentq.core.request import DecodeRequest
from latentq.models import chunked
from latentq.models.loader import LoadedModel, load_model
from latentq.models.registry import BUILTIN_MODELS, load_registry
from latentq.state import metrics
from latentq.store import LocalStore
from latentq.worker import DecodeWorker, video_stream
from latentq.worker.encode import Mp4Writer, encode_mp4
from latentq.worker.pipeline import streamable
from latentq.worker.video_stream import FrameStream, GroupStream, StreamAborted, StreamedVideo

pytestmark = pytest.mark.timeout(120)

WAN_LATENT = (2, 16, 3, 4, 4)  # two jobs of 9 frames, 32x32: three decoder calls (1 + 4 + 4 frames)


def _wan() -> LoadedModel:
    spec = dataclasses.replace(BUILTIN_MODELS["wan"], source=None, config=CONFIGS["wan"])
    return load_model(spec, "cpu")


def _family_model(name: str) -> LoadedModel:
    """A family's tiny VAE as tests/pipelines_video.py builds it, held as a worker holds a model."""
    case = BUILDERS[name]()
    spec = dataclasses.replace(BUILTIN_MODELS[name], **case.spec_fields)
    return LoadedModel(spec, case.pipe.vae.eval().requires_grad_(False), torch.device("cpu"), torch.float32)


def _frames(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


# --- chunked decodes --------------------------------------------------------------------------------
@pytest.mark.unit
@pytest.mark.parametrize("name, shape, options", [
    ("wan", WAN_LATENT, {}),
    ("wan22", (1, 48, 3, 2, 4), {}),  # patchified: unpatchify per chunk
    ("cogvideox", (1, 5, 4, 2, 3), {}),  # frames first; latent frames in batches of 2 (the remainder first)
    ("cogvideox", (1, 6, 4, 2, 3), {"num_frames": 17}),  # CogVideoX 1.5's padding frame dropped before
    ("easyanimate", (1, 4, 3, 2, 3), {}),
])  # fmt: skip
def test_the_decoders_chunks_in_order_are_the_whole_decode_bit_for_bit(name, shape, options):
    model = _wan() if name == "wan" else _family_model(name)
    request = DecodeRequest(model=name, output_format="mp4", **options)
    assert chunked.streams(model, request, tile=False)
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    whole = model.decode(latents, request=request)

    chunks: list[torch.Tensor] = []
    frames = chunked.decode_chunks(model, latents, request, chunks.append)

    assert len(chunks) > 1 and frames == whole.shape[2]
    assert torch.equal(torch.cat(chunks, dim=2), whole)


@pytest.mark.unit
def test_tiled_vae_input_and_single_call_decodes_are_not_streamed():
    wan = _wan()
    assert not chunked.streams(wan, DecodeRequest(model="wan", output_format="mp4"), tile=True)  # blended tiles
    assert not chunked.streams(wan, DecodeRequest(model="wan", output_format="mp4", vae_input=True), tile=False)
    # one decoder call (mochi: unless framewise, which drops frames); allegro: tiled always, then cropped
    for name in ("mochi", "hunyuanvideo15", "allegro"):
        assert not chunked.streams(_family_model(name), DecodeRequest(model=name, output_format="mp4"), tile=False)

    latent = torch.zeros(1, 16, 3, 4, 4)
    assert streamable(wan, [DecodeRequest(model="wan", output_format="mp4")], [latent])
    assert not streamable(wan, [DecodeRequest(model="wan", output_format="frames")], [latent])  # mp4 only
    assert not streamable(wan, [DecodeRequest(model="wan", output_format="mp4", tile=True)], [latent])
    wan.spec = dataclasses.replace(wan.spec, tile_above_pixels=16 * 16)  # large enough to tile by default
    assert not streamable(wan, [DecodeRequest(model="wan", output_format="mp4")], [latent])


@pytest.mark.unit
def test_a_long_video_of_a_framewise_vae_streams_untiled_and_a_whole_clip_vae_tiles_it():
    """Wan decodes frame by frame and tiles only in space: 121 frames are no reason to tile (and so to lose
    the stream); HunyuanVideo decodes the clip at once, and its frames past tile_above_frames tile."""
    wan = _wan()
    long_clip = torch.zeros(1, 16, 31, 4, 4)  # 121 frames
    assert not wan.should_tile(32, 32, 121)
    assert streamable(wan, [DecodeRequest(model="wan", output_format="mp4")], [long_clip])
    hunyuan = dataclasses.replace(BUILTIN_MODELS["hunyuanvideo"], source=None, config=CONFIGS["hunyuanvideo"])
    whole = LoadedModel(hunyuan, torch.nn.Module(), torch.device("cpu"), torch.float32)
    whole.module.use_tiling = False
    assert whole.should_tile(32, 32, 121) and not whole.should_tile(32, 32, 61)


# --- the incremental MP4 writer -------------------------------------------------------------------------
@pytest.mark.unit
def test_an_mp4_written_chunk_by_chunk_is_encode_mp4s_file():
    frames = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (13, 32, 48, 3), dtype=np.uint8))
    writer = Mp4Writer(fps=8, quality=100)
    for start, stop in ((0, 1), (1, 5), (5, 9), (9, 13)):
        writer.write(frames[start:stop])
    streamed = writer.finish()

    whole = encode_mp4(frames, fps=8, quality=100)
    assert (writer.frames, writer.width, writer.height) == (13, 48, 32)
    assert streamed == whole  # same frames, same options: x264 makes the same file
    assert np.array_equal(_frames(streamed), _frames(whole))


@pytest.mark.unit
def test_an_unfinished_mp4_is_dropped_and_a_changed_frame_size_refused():
    writer = Mp4Writer(fps=8, quality=90)
    writer.write(torch.zeros(2, 16, 16, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="16x16"):
        writer.write(torch.zeros(2, 32, 16, 3, dtype=torch.uint8))
    writer.close()
    with pytest.raises(ValueError, match="at least one frame"):
        Mp4Writer(fps=8, quality=90).finish()


# --- frame streams ------------------------------------------------------------------------------------
@pytest.mark.unit
def test_a_full_stream_holds_the_producer_until_the_consumer_reads():
    stream = FrameStream(max_chunks=2)
    stream.put(0)
    stream.put(1)
    third = threading.Thread(target=stream.put, args=(2,))
    third.start()
    third.join(0.2)
    assert third.is_alive()  # blocked: the stream is full (bounded memory)
    reader = iter(stream)
    assert next(reader) == 0
    third.join()  # one slot freed: the put goes through
    stream.close()
    assert list(reader) == [1, 2]


@pytest.mark.unit
def test_a_streamed_videos_encode_time_is_x264s_own_not_the_cached_outputs(tmp_path):
    from latentq.worker.pipeline import store_output

    stream = FrameStream()
    video = StreamedVideo(stream, 1)
    stream.put(torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8))
    stream.close()
    video.encode(DecodeRequest(model="wan", output_format="mp4"))  # the encode pool's task, beside the decode
    assert video.encode_seconds > 0
    timings: dict[str, float] = {}
    (record,) = store_output(LocalStore(tmp_path), "job", DecodeRequest(model="wan", output_format="mp4"), video,
                             timings=timings)  # fmt: skip
    assert timings["encode"] == video.encode_seconds and record["frames"] == 4


@pytest.mark.unit
def test_an_aborted_stream_raises_in_its_consumer_and_a_cancelled_one_frees_its_producer():
    stream = FrameStream(max_chunks=1)
    stream.put("chunk")
    stream.abort(RuntimeError("decoder failed"))
    with pytest.raises(StreamAborted, match="decoder failed"):
        list(stream)

    stream = FrameStream(max_chunks=1)
    stream.put("chunk")
    blocked = threading.Thread(target=stream.put, args=("next",))
    blocked.start()
    stream.cancel()  # the encoder gave up: the decode goes on without this job's frames
    blocked.join()
    stream.put("dropped")


@pytest.mark.unit
def test_an_aborted_video_only_releases_its_slot_and_a_failed_encode_is_finished_once():
    request = DecodeRequest(model="wan", output_format="mp4")
    calls: list[str] = []
    group = GroupStream(_wan().path, 1)
    group.feed(torch.rand(1, 3, 2, 16, 16))
    group.end()  # the decode did not complete
    group.videos[0].consume(request, lambda: calls.append("release"), lambda *a: calls.append("finish"))
    assert calls == ["release"]

    calls.clear()
    video = StreamedVideo(FrameStream(), 1)
    video.stream.put(torch.zeros(2, 16, 16, 3, dtype=torch.uint8))
    video.stream.put(torch.zeros(2, 8, 8, 3, dtype=torch.uint8))  # the encoder refuses it
    video.stream.close()
    video.consume(request, lambda: calls.append("release"), lambda *a: calls.append("finish"))
    assert calls == ["finish"]  # finish stores nothing: it fails the job with the encoder's error
    with pytest.raises(ValueError, match="16x16"):
        video.encode(request)


# --- the worker ---------------------------------------------------------------------------------------
@pytest.fixture
def wan_models(models_file, tmp_path):
    """The tiny Wan VAE saved where the models file points (the worker and the client both read it)."""
    torch.manual_seed(0)
    _wan().module.save_pretrained(tmp_path / "wan" / "vae")
    models_file.write_text(models_file.read_text() + f'\n[models.wan]\nsource = "{tmp_path / "wan"}"\n')
    return models_file


def _worker(models_file, redis_conn, tmp_path, name: str, **options) -> DecodeWorker:
    model = load_model(load_registry(models_file).get("wan"), "cpu")
    return DecodeWorker({"wan": model}, redis_conn, LocalStore(tmp_path / "results"), name=name, max_wait_ms=0,
                        **options)  # fmt: skip


def _run(worker: DecodeWorker) -> None:
    worker.work(burst=True)
    worker.finisher.close()


def _mp4s(tmp_path, jobs) -> list[bytes]:
    store = LocalStore(tmp_path / "results")
    return [store.get(job.info().results[0].key) for job in jobs]


def _count_feeds(monkeypatch) -> list[int]:
    """Chunks handed to frame streams (the real feed, counted)."""
    fed: list[int] = []
    feed = video_stream.GroupStream.feed

    def counted(self, images):
        fed.append(images.shape[2])
        return feed(self, images)

    monkeypatch.setattr(video_stream.GroupStream, "feed", counted)
    return fed


def test_a_worker_with_encode_threads_streams_mp4s_with_the_unstreamed_frames(env, wan_models, redis_conn, tmp_path,
                                                                           monkeypatch):  # fmt: skip
    latents = torch.randn(WAN_LATENT, generator=torch.Generator().manual_seed(2))
    client = Client()
    fed = _count_feeds(monkeypatch)
    inline = client.submit_many(latents, model="wan", output_format="mp4", quality=100)
    _run(_worker(wan_models, redis_conn, tmp_path, "inline"))  # encode_threads=0 (the CPU default): decode, then encode
    assert fed == []
    narrow = client.submit_many(latents, model="wan", output_format="mp4", quality=100)
    _run(_worker(wan_models, redis_conn, tmp_path, "narrow", encode_threads=1))  # fewer threads than jobs
    assert fed == []
    streamed = client.submit_many(latents, model="wan", output_format="mp4", quality=100)
    _run(_worker(wan_models, redis_conn, tmp_path, "streaming", encode_threads=2))
    assert fed == [1, 4, 4]  # one group of two jobs, fed chunk by chunk

    infos = [job.info() for job in inline + narrow + streamed]
    assert [info.status.value for info in infos] == ["finished"] * 6
    assert {info.batch_size for info in infos} == {2}
    assert [info.results[0].frames for info in infos] == [9] * 6
    assert all(info.timings["decode"] > 0 for info in infos)
    text = metrics.render(redis_conn, ["wan"], {}, {})
    assert 'latentq_decode_seconds_count{model="wan"} 3' in text  # one decode per batch, streamed or not
    assert 'latentq_batch_size_sum{model="wan"} 6' in text
    inline_mp4s, streamed_mp4s = _mp4s(tmp_path, inline), _mp4s(tmp_path, streamed)
    for whole, narrow_mp4 in zip(inline_mp4s, _mp4s(tmp_path, narrow)):  # frames: x264's threads may vary bytes
        assert np.array_equal(_frames(whole), _frames(narrow_mp4))
    for whole, chunked_mp4 in zip(inline_mp4s, streamed_mp4s):
        assert np.array_equal(_frames(whole), _frames(chunked_mp4))
        assert whole == chunked_mp4
    assert not np.array_equal(_frames(inline_mp4s[0]), _frames(inline_mp4s[1]))  # each job its own video


class _DecoderFault:
    """Makes the VAE's decoder raise on its ``call``-th call (once): a decode that fails half-way."""

    def __init__(self, model: LoadedModel, call: int, error: BaseException) -> None:
        self.calls = 0
        self.call = call
        self.error = error
        model.module.decoder.register_forward_pre_hook(self)

    def __call__(self, module, args) -> None:
        self.calls += 1
        if self.calls == self.call:
            raise self.error


def test_a_decode_failing_half_way_fails_its_job_once_and_the_worker_serves_on(env, wan_models, redis_conn, tmp_path,
                                                                             caplog):  # fmt: skip
    client = Client()
    failing, after = client.submit_many(torch.randn(WAN_LATENT), model="wan", output_format="mp4")
    worker = _worker(wan_models, redis_conn, tmp_path, "faulty", encode_threads=2, max_batch=1)  # one job a batch
    _DecoderFault(worker.models["wan"], call=2, error=RuntimeError("injected: decoder failed on chunk 2"))
    with caplog.at_level(logging.WARNING, logger="latentq.worker"):
        _run(worker)

    failed, finished = failing.info(), after.info()
    assert failed.status.value == "failed" and "injected: decoder failed on chunk 2" in failed.error
    assert not failed.results
    assert sum(f"job {failing.id} failed" in record.getMessage() for record in caplog.records) == 1
    assert finished.status.value == "finished" and finished.results[0].frames == 9
    assert worker.finisher.pending._value == worker.finisher.pending._initial_value  # every slot given back


def test_an_out_of_memory_half_way_falls_back_to_the_tiled_decode_and_finishes_whole(env, wan_models, redis_conn,
                                                                                     tmp_path):  # fmt: skip
    latent = torch.randn(WAN_LATENT[1:], generator=torch.Generator().manual_seed(3))
    client = Client()
    reference = client.submit(latent, model="wan", output_format="mp4", quality=100)
    _run(_worker(wan_models, redis_conn, tmp_path, "reference"))
    job = client.submit(latent, model="wan", output_format="mp4", quality=100)
    worker = _worker(wan_models, redis_conn, tmp_path, "oom", encode_threads=2)
    fault = _DecoderFault(worker.models["wan"], call=3, error=torch.OutOfMemoryError("injected: CUDA out of memory"))
    _run(worker)

    info = job.info()
    assert fault.calls == 3 + 3  # the streamed try stopped at its third chunk; the tiled retry decoded whole
    assert info.status.value == "finished" and info.tiled
    assert np.array_equal(_frames(_mp4s(tmp_path, [job])[0]), _frames(_mp4s(tmp_path, [reference])[0]))


def test_a_batch_failing_half_way_is_decoded_again_one_by_one_and_finished_whole(env, wan_models, redis_conn,
                                                                                tmp_path):  # fmt: skip
    jobs = Client().submit_many(torch.randn(WAN_LATENT), model="wan", output_format="mp4")
    worker = _worker(wan_models, redis_conn, tmp_path, "one-by-one", encode_threads=2)
    fault = _DecoderFault(worker.models["wan"], call=2, error=RuntimeError("injected: a passing failure"))
    _run(worker)

    infos = [job.info() for job in jobs]
    assert fault.calls == 2 + 3 + 3  # the streamed batch stopped at its second chunk; each job then alone, whole
    assert [info.status.value for info in infos] == ["finished"] * 2
    assert [(info.batch_size, info.results[0].frames) for info in infos] == [(1, 9), (1, 9)]
    assert worker.finisher.pending._value == worker.finisher.pending._initial_value


# --- real worker processes: a signal while a streamed batch decodes --------------------------------------
def _delayed(seconds: float) -> dict[str, str]:
    import json

    return {"LATENTQ_FAULTS": json.dumps({"decode_delay_s": seconds})}  # the decode starts late: its streams wait


@pytest.mark.timeout(180)
def test_sigterm_while_a_streamed_batch_decodes_finishes_its_videos_then_exits(procs, wan_models):
    import signal

    from helpers import wait_until

    from latentq import JobStatus

    worker = procs.worker("wan", name="streamer", max_wait_ms=0, extra=("--encode-threads", "2"), env=_delayed(3))
    jobs = Client().submit_many(torch.randn(2, 16, 3, 4, 4), model="wan", output_format="mp4")
    wait_until(lambda: all(job.status() is JobStatus.STARTED for job in jobs), 60)
    worker.send_signal(signal.SIGTERM)  # the encoders are waiting for frames: the warm shutdown waits for them
    assert worker.wait(90) == 0
    infos = [job.info() for job in jobs]
    assert [info.status.value for info in infos] == ["finished", "finished"], infos
    assert [info.results[0].frames for info in infos] == [9, 9]


@pytest.mark.timeout(180)
def test_sigkill_while_a_streamed_batch_decodes_leaves_no_part_video_and_another_worker_finishes_it(
        procs, wan_models, redis_conn):  # fmt: skip
    import signal

    from helpers import wait_until

    from latentq import JobStatus

    doomed = procs.worker("wan", name="doomed", max_wait_ms=0, extra=("--encode-threads", "2"), env=_delayed(30))
    jobs = Client().submit_many(torch.randn(2, 16, 3, 4, 4), model="wan", output_format="mp4")
    wait_until(lambda: all(job.status() is JobStatus.STARTED for job in jobs), 60)
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(10)
    procs.worker("wan", name="rescuer", max_wait_ms=0, extra=("--encode-threads", "2"))
    for job in jobs:
        job.wait(timeout=90)
    infos = [job.info() for job in jobs]
    assert [(info.status.value, info.worker) for info in infos] == [("finished", "rescuer")] * 2
    assert [len(info.results) for info in infos] == [1, 1]  # one MP4 each, whole
    assert [_frames(job.read()).shape[0] for job in jobs] == [9, 9]
    assert list(redis_conn.scan_iter("latentq:latent:*")) == []
