"""TAEF2: the tiny autoencoder for FLUX.2 latents (32 channels, 1/8 scale).

The layer indices match the published ``taef2.safetensors`` key layout
(``encoder.layers.N.*``, ``decoder.layers.N.*``). Weights and device are
passed in, never guessed.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

__all__ = ["LATENT_CHANNELS", "TAEF2"]

LATENT_CHANNELS = 32
WIDTH = 64


def _conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class _Pool(nn.Module):
    """x + pool(x): 1x1 conv to 4n, GroupNorm(4), relu, 1x1 conv back to n."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.pool = nn.Sequential(
            nn.Conv2d(n, 4 * n, 1, bias=False), nn.GroupNorm(4, 4 * n), nn.ReLU(), nn.Conv2d(4 * n, n, 1, bias=False)
        )


class Block(nn.Module):
    """relu(body(x) + x), optionally after x <- x + pool(x)."""

    def __init__(self, n: int, *, pooling: bool = False) -> None:
        super().__init__()
        self.conv = nn.Sequential(_conv(n, n), nn.ReLU(), _conv(n, n), nn.ReLU(), _conv(n, n))
        if pooling:
            self.pool = _Pool(n).pool
        else:
            self.pool = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return torch.relu(self.conv(x) + x)


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        n = WIDTH
        self.layers = nn.Sequential(
            _conv(3, n), Block(n),
            _conv(n, n, stride=2, bias=False), Block(n), Block(n), Block(n),
            _conv(n, n, stride=2, bias=False), Block(n), Block(n), Block(n),
            _conv(n, n, stride=2, bias=False), Block(n, pooling=True), Block(n, pooling=True), Block(n, pooling=True),
            _conv(n, LATENT_CHANNELS),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Decoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        n = WIDTH
        self.layers = nn.Sequential(
            _conv(LATENT_CHANNELS, n), nn.ReLU(),
            Block(n, pooling=True), Block(n, pooling=True), Block(n, pooling=True),
            nn.Upsample(scale_factor=2), _conv(n, n, bias=False), Block(n), Block(n), Block(n),
            nn.Upsample(scale_factor=2), _conv(n, n, bias=False), Block(n), Block(n), Block(n),
            nn.Upsample(scale_factor=2), _conv(n, n, bias=False), Block(n),
            _conv(n, 3),
        )  # fmt: skip

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # Soft clamp of the latent, part of the trained model.
        return self.layers(torch.tanh(z / 3) * 3)


class TAEF2(nn.Module):
    """Encoder: RGB in [0, 1] -> latent. Decoder: latent -> RGB, about [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = Encoder()
        self.decoder = Decoder()

    @classmethod
    def from_file(cls, path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> TAEF2:
        from safetensors.torch import load_file

        model = cls()
        state = load_file(str(path))
        model.load_state_dict(state, strict=True)
        return model.to(device=device, dtype=dtype).eval().requires_grad_(False)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(latents)
