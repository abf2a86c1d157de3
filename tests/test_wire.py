import struct

import pytest
import torch

from latentq.errors import InvalidLatent, LatentTooLarge
from latentq.spec import Limits
from latentq.wire import latent_from_bytes, latent_to_bytes

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
