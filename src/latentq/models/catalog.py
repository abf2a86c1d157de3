"""Built-in image models of the newer pipelines (Qwen-Image, HunyuanImage 2.1, SANA, Z-Image, HiDream, Kandinsky 2.2).

Torch-free: the registry, and so producers and the API, import it. Each spec names its ``family``
(the module of ``latentq.models.families`` that checks, unpacks, normalises and decodes as its
pipeline does; none where the generic fields say it all), the real hub weights (``source`` /
``subfolder``) and the pipelines whose latents it decodes. Scaling and shift factors are the
VAE configs' own, which those pipelines read.
"""

from __future__ import annotations

from .modelspec import ModelSpec

__all__ = ["SPECS"]

SPECS: tuple[ModelSpec, ...] = ()
