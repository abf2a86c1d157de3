import struct

import pytest
import torch

from latentq.core.request import Limits
from latentq.core.wire import latent_from_bytes, latent_to_bytes
from latentq.errors import InvalidLatent, LatentTooLarge

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_round_trip_keeps_values_and_dtype(dtype):
    tensor = torch.randn(1, 4, 8, 8).to(dtype)
    back = latent_from_bytes(latent_to_bytes(tensor), Limits())
    assert back.dtype == dtype and torch.equal(back, tensor)


def test_size_limit_checked_from_the_header_before_loading():
    data = latent_to_bytes(torch.zeros(1, 4, 64, 64))
    with pytest.raises(LatentTooLarge, match="16384 elements"):
        latent_from_bytes(data, Limits(max_latent_elements=1000))
    with pytest.raises(LatentTooLarge, match="bytes"):
        latent_from_bytes(data, Limits(max_body_bytes=100))


@pytest.mark.parametrize(
    "body, words",
    [
        (b"", "shorter"),
        (struct.pack("<Q", 10**12) + b"{}", "header length"),
        (struct.pack("<Q", 4) + b"nope", "not JSON"),
        (struct.pack("<Q", 2) + b"{}", "exactly one tensor"),
    ],
)
def test_malformed_bodies(body, words):
    with pytest.raises(InvalidLatent, match=words):
        latent_from_bytes(body, Limits())


def test_two_tensors_rejected():
    from safetensors.torch import save

    with pytest.raises(InvalidLatent, match="exactly one tensor"):
        latent_from_bytes(save({"a": torch.zeros(2), "b": torch.zeros(2)}), Limits())


# ---------------------------------------------------------------- hostile headers: only our two exceptions

import json


def _body(header: bytes, data: bytes = b"\0" * 4) -> bytes:
    return struct.pack("<Q", len(header)) + header + data


@pytest.mark.parametrize(
    "header, error",
    [
        (b'{"x": {"dtype": "F32", "shape": ["a"], "data_offsets": [0, 4]}}', InvalidLatent),
        (b'{"x": {"dtype": "F32", "shape": [null], "data_offsets": [0, 4]}}', InvalidLatent),
        (b'{"x": {"dtype": "F32", "shape": [1e400], "data_offsets": [0, 4]}}', InvalidLatent),
        (b'{"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}', InvalidLatent),
        (b'{"x": {"dtype": "F32", "shape": [1, 1, 1, 1, 1, 1, 1, 1, 1], "data_offsets": [0, 4]}}', InvalidLatent),
        (b'{"x": {"dtype": "F32", "shape": [10000000000, 10000000000], "data_offsets": [0, 4]}}', LatentTooLarge),
        (b'{"x": {"dtype": "I32", "shape": [1], "data_offsets": [0, 4]}}', InvalidLatent),
        (b'{"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 8]}}', InvalidLatent),
        (b'{"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}', InvalidLatent),
        (b'{"__metadata__": 5, "x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', InvalidLatent),
        (b"[" * 60_000 + b"]" * 5_000, InvalidLatent),  # within the length cap: refused for its depth
        (b'{"a":' * 10_000 + b"1" + b"}" * 10_000, InvalidLatent),
        (b"[" * 100_000, InvalidLatent),  # over the length cap
    ],
)
def test_hostile_headers_raise_only_invalid_latent_or_too_large(header, error):
    with pytest.raises(error):
        latent_from_bytes(_body(header), Limits())


def test_generated_headers_raise_only_invalid_latent_or_too_large():
    hypothesis = pytest.importorskip("hypothesis")  # not in pyproject's test extra (yet): skipped without it
    st = hypothesis.strategies
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
        max_leaves=20,
    )
    entry = st.fixed_dictionaries(
        {},
        optional={"dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "F64", "x"]) | json_values,
                  "shape": st.lists(st.integers(-2, 40) | json_values, max_size=10) | json_values,
                  "data_offsets": st.lists(st.integers(-4, 200), max_size=3) | json_values},
    )  # fmt: skip

    @hypothesis.settings(max_examples=300, deadline=None)
    @hypothesis.given(entries=st.dictionaries(st.text(max_size=8), entry | json_values, max_size=3),
                      data=st.binary(max_size=160))  # fmt: skip
    def check(entries: dict, data: bytes) -> None:
        header = json.dumps(entries).encode()
        try:
            tensor = latent_from_bytes(_body(header, data), Limits(max_latent_elements=1000))
        except (InvalidLatent, LatentTooLarge):
            return
        assert tensor.numel() > 0

    check()


# ---------------------------------------------------------------- video + audio bodies (LTX-2's one MP4 with sound)


def test_video_and_audio_latents_round_trip():
    from latentq.core.wire import latents_from_bytes

    video, audio = torch.randn(1, 4, 2, 3, 5), torch.randn(1, 2, 7, 4).to(torch.bfloat16)
    got_video, got_audio = latents_from_bytes(latent_to_bytes(video, audio), Limits())
    assert torch.equal(got_video, video) and torch.equal(got_audio, audio)
    assert latents_from_bytes(latent_to_bytes(video), Limits())[1] is None  # one tensor: as before
    with pytest.raises(InvalidLatent, match="exactly one tensor here"):  # where only one is taken
        latent_from_bytes(latent_to_bytes(video, audio), Limits())


def test_video_and_audio_bodies_checked_like_one_tensor_bodies():
    from safetensors.torch import save

    from latentq.core.wire import latents_from_bytes

    limits = Limits(max_latent_elements=100)
    with pytest.raises(LatentTooLarge) as too_large:
        latents_from_bytes(save({"latents": torch.zeros(4), "audio_latents": torch.zeros(101)}), limits)
    assert too_large.value.field == "audio_latents"
    with pytest.raises(InvalidLatent, match="NaN") as nan:
        latents_from_bytes(save({"latent": torch.zeros(4), "audio_latents": torch.tensor([float("nan")])}), limits)
    assert nan.value.field == "audio_latents"
    with pytest.raises(InvalidLatent, match="dtype int32"):
        latents_from_bytes(save({"latent": torch.zeros(4), "audio_latents": torch.zeros(3, dtype=torch.int32)}),
                           limits)  # fmt: skip
    with pytest.raises(InvalidLatent, match="'latent' \\(or 'latents'\\) and 'audio_latents'"):
        latents_from_bytes(save({"latent": torch.zeros(4), "latents": torch.zeros(3)}), limits)
    # Overlapping data: both entries claim the same bytes (the body is one tensor long).
    header = json.dumps({"latent": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                         "audio_latents": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()  # fmt: skip
    with pytest.raises(InvalidLatent, match="gaps or overlap"):
        latents_from_bytes(_body(header), limits)
