"""LTX-2's audio: ``AutoencoderKLLTX2Audio`` (latent -> mel spectrogram) then the pipeline's vocoder (-> waveform).

LTX2Pipeline with ``output_type="latent"`` returns the audio latents denormalised and unpacked,
(B, C, l, mel_bins); its audio path is ``audio_vae.decode(audio_latents)`` then ``vocoder(mel)``, at the
vocoder's ``output_sampling_rate``. The vocoder (``LTX2Vocoder`` or ``LTX2VocoderWithBWE``, whichever its
config names) is loaded from the ``vocoder`` folder beside the audio VAE's, once per loaded model.
"""

from __future__ import annotations

import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ...core.layouts import OutputGeometry
from ...core.request import AUDIO_FORMATS
from ...errors import InvalidLatent, ModelLoadError
from . import Family
from .videobase import check_options, vae_call

if TYPE_CHECKING:
    from ...core.request import DecodeRequest
    from ..loader import LoadedModel
    from ..modelspec import ModelSpec

__all__ = ["FAMILY", "VOCODER_SUBFOLDER", "LTX2AudioFamily"]

VOCODER_SUBFOLDER = "vocoder"


def _load_vocoder(model: LoadedModel) -> torch.nn.Module:
    from diffusers.pipelines.ltx2 import vocoder as vocoders

    spec = model.spec
    if spec.source is None:
        raise ModelLoadError(f"model {spec.name}: the vocoder loads from the weights `source`; none is given")
    try:
        config = vocoders.LTX2Vocoder.load_config(spec.source, subfolder=VOCODER_SUBFOLDER)
        cls = getattr(vocoders, config.get("_class_name", "LTX2Vocoder"), None)
        if cls is None or not isinstance(cls, type) or not issubclass(cls, torch.nn.Module):
            raise ModelLoadError(f"model {spec.name}: unknown vocoder class {config.get('_class_name')!r}")
        module = cls.from_pretrained(spec.source, subfolder=VOCODER_SUBFOLDER, torch_dtype=model.dtype)
    except ModelLoadError:
        raise
    except Exception as exc:
        where = Path(spec.source) / VOCODER_SUBFOLDER if Path(spec.source).exists() else spec.source
        raise ModelLoadError(f"cannot load {spec.name}'s vocoder from {where}: {exc}") from exc
    return module.to(model.device).eval().requires_grad_(False)


class LTX2AudioFamily(Family):
    name = "ltx2audio"
    sample_rate = 24000  # LTX-2's vocoder; the loaded vocoder's config decides (``output_sampling_rate``)

    def __init__(self) -> None:
        # keyed by the audio VAE module: an evicted model's vocoder goes with it
        self._vocoders: weakref.WeakKeyDictionary[torch.nn.Module, torch.nn.Module] = weakref.WeakKeyDictionary()
        self._loading = threading.Lock()

    def output_kind(self, spec: ModelSpec) -> str:
        return "audio"

    def output_formats(self, spec: ModelSpec) -> list[str]:
        return [*AUDIO_FORMATS, "tensor"]

    def describe_shape(self, spec: ModelSpec) -> list[Any]:
        return ["B", spec.latent_channels, "l", "mel_bins"]

    def check(self, latent: torch.Tensor, spec: ModelSpec, request: DecodeRequest) -> OutputGeometry:
        check_options(spec, request, ())
        if latent.ndim != 4 or latent.shape[1] != spec.latent_channels:
            raise InvalidLatent(f"latent {tuple(latent.shape)} is not (B, {spec.latent_channels}, l, mel_bins), "
                                f"LTX2Pipeline's audio latents", field="latent")  # fmt: skip
        # width: about the samples (temporal_factor: output samples per latent step)
        return OutputGeometry(latent.shape[2] * spec.temporal_factor, 1)

    def vocoder(self, model: LoadedModel) -> torch.nn.Module:
        with self._loading:
            vocoder = self._vocoders.get(model.module)
            if vocoder is None:
                vocoder = self._vocoders[model.module] = _load_vocoder(model)
            return vocoder

    def output_sample_rate(self, model: LoadedModel) -> int:
        return int(self.vocoder(model).config.output_sampling_rate)

    def to_vae(self, model: LoadedModel, latents: torch.Tensor, request: DecodeRequest) -> torch.Tensor:
        return latents

    def decode(self, model: LoadedModel, z: torch.Tensor, request: DecodeRequest, *, tile: bool) -> torch.Tensor:
        mel = vae_call(model, z, tile=False)
        vocoder = self.vocoder(model)
        with model.lock, torch.inference_mode():
            audio = vocoder(mel.to(model.device, model.dtype))
        return audio.float().cpu()


FAMILY = LTX2AudioFamily()
