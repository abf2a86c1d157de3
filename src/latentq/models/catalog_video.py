"""Built-in video and audio models whose pipelines need a family module (``latentq.models.families``).

Issue 14 part 2 (wan22, ltxvideo, ltx2, hunyuanvideo15, cogvideox, mochi, svd, allegro, easyanimate,
stableaudio) lists its ``ModelSpec`` entries here; the registry imports ``SPECS``. Keep this module
torch-free (the registry, and so producers and the API, import it): a spec names its ``family``
module, which imports diffusers only inside its methods. Image families live in ``catalog.py``.
"""

from __future__ import annotations

from .modelspec import ModelSpec

__all__ = ["SPECS"]

SPECS: tuple[ModelSpec, ...] = ()
