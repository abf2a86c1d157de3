"""A drop-in ``vae=`` for diffusers pipelines whose decode runs on latentq.

    pipe = DiffusionPipeline.from_pretrained(repo, vae=latentq.RemoteVAE("http://latentq:8000", model="sdxl"))

:class:`RemoteVAE` carries the VAE's diffusers config, so the pipeline's own
code computes its sizes, unscales and unpacks the latents and postprocesses
the images exactly as with the real VAE; only ``vae.decode`` differs: the
VAE-space latents it is handed go to latentq's queue (one job per sample,
``tensor`` output so the pipeline's postprocess sees the float decode) and
the decoded batch comes back with the shape, dtype and device of a local decode.

The latents go out as ``vae_input`` jobs: the worker skips its family's unpacking and
normalising (the pipeline did both) and decodes as the family does, so no factor is applied
twice and any image or video family works unchanged. One exception: FLUX.2 denormalises with
its VAE's batch-norm statistics, which are weights, not config; this module shows the
pipeline an identity batch norm and sends the tokens packed again, for the worker's real one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from diffusers import ModelMixin
from diffusers.configuration_utils import FrozenDict
from diffusers.models.autoencoders.vae import DecoderOutput
from safetensors.torch import load as st_load

from ..errors import InvalidRequest, JobTimeout, LatentqError, UnsupportedFormat
from ..producer import Client, HttpClient

__all__ = ["DEFAULT_TIMEOUT_S", "RemoteVAE", "describe_model", "open_client", "vae_space_request", "wait_and_read"]

DEFAULT_TIMEOUT_S = 300.0
_PLAIN = (int, float, bool, str, tuple, list, type(None))


def open_client(client: Client | HttpClient | str | None, *, api_key: str | None = None) -> Client | HttpClient:
    """A client as given; an ``http(s)://`` URL -> ``HttpClient`` (API key: ``api_key`` or ``$LATENTQ_API_KEY``);
    a Redis URL or None (``$LATENTQ_REDIS_URL``) -> ``Client``."""
    if isinstance(client, (Client, HttpClient)):
        return client
    if isinstance(client, str) and client.startswith(("http://", "https://")):
        return HttpClient(client.rstrip("/"), api_key=api_key)
    return Client(client)


def describe_model(client: Client | HttpClient, model: str) -> dict[str, Any]:
    """The deployment's description of ``model`` (``GET /v1/models``), plus what only a local registry knows."""
    if isinstance(client, Client):
        spec = client.registry.get(model)
        return {**spec.describe(), "vae_config": spec.config, "subfolder": spec.subfolder}
    for entry in client.request("GET", "/v1/models").json()["models"]:
        if entry.get("name") == model:
            return entry
    from ..errors import UnknownModel

    raise UnknownModel(f"the latentq API serves no model {model!r}", field="model")


def _load_config(cls: Any, description: dict[str, Any], config: Any, subfolder: str | None) -> dict[str, Any]:
    """The VAE's config: given (a dict, a config.json, a directory or hub repo), else the deployment's."""
    if isinstance(config, dict):
        return dict(config)
    if config is not None:
        path = Path(str(config)).expanduser()
        if path.is_file():
            return cls._dict_from_json_file(path)
        return dict(cls.load_config(str(config), subfolder=subfolder))
    if description.get("vae_config"):  # a model declared inline: GET /v1/models carries its config
        return dict(description["vae_config"])
    source = description.get("source")
    if not source:
        raise InvalidRequest(f"model {description['name']} names no weights source; pass the VAE's config "
                             "(RemoteVAE(..., config=...): a dict, a config.json or a directory)", field="config")  # fmt: skip
    tries = [subfolder or description.get("subfolder")] if subfolder or description.get("subfolder") else [None, "vae"]
    for index, folder in enumerate(tries):
        try:
            return dict(cls.load_config(source, subfolder=folder))
        except (OSError, ValueError) as exc:  # not there (diffusers raises EnvironmentError)
            if index == len(tries) - 1:
                raise InvalidRequest(f"cannot read the config of model {description['name']} from {source!r}: "
                                     f"{exc}; pass config=", field="config") from None  # fmt: skip
    raise AssertionError("unreachable")


def _shadow(description: dict[str, Any], config: Any, subfolder: str | None) -> torch.nn.Module:
    """The real VAE class built on the meta device: its full config (defaults included) and plain
    attributes (e.g. HunyuanVideo's ``spatial_compression_ratio``), without any memory for weights."""
    import diffusers

    class_name = description.get("class")
    cls = getattr(diffusers, str(class_name), None)
    if cls is None or description.get("loader") != "diffusers":
        raise UnsupportedFormat(f"model {description['name']} ({class_name}) is not a diffusers VAE class",
                                field="model")  # fmt: skip
    values = _load_config(cls, description, config, subfolder)
    with torch.device("meta"):
        return cls.from_config(values)


def vae_space_request(z: torch.Tensor, description: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    """What ``vae.decode`` was handed -> the latent to submit and the job options that decode it to the same pixels."""
    x = z.detach().to("cpu", torch.float32).contiguous()
    if description.get("normalization") != "batch_norm":
        return x, {"vae_input": True}  # the worker skips the family's unpacking and normalising
    # FLUX.2: the pipeline applied the identity batch norm shown to it; send its tokens for the worker's real one.
    if x.ndim != 4 or description.get("layout") not in ("packed", "flux2"):
        raise UnsupportedFormat(f"RemoteVAE cannot send {tuple(z.shape)} latents of layout "
                                f"{description.get('layout')!r}", field="model")  # fmt: skip
    batch, channels, h, w = x.shape
    factor = int(description.get("spatial_factor") or 8)
    # 2x2 patches, channels-major within a patch (Flux2Pipeline's patchify), row-major tokens (its _pack_latents)
    patches = x.view(batch, channels, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    tokens = patches.reshape(batch, (h // 2) * (w // 2), channels * 4)
    return tokens, {"height": h * factor, "width": w * factor}


def _weight_buffers(shadow: torch.nn.Module, description: dict[str, Any], subfolder: str | None) -> dict[str, Any]:
    """The class's top-level buffers that live in the weights, not the config (LTX's ``latents_mean`` /
    ``latents_std``, which its pipelines read from ``pipe.vae``), read from the weights file alone (local,
    or the hub's, cached); {} for classes without such buffers."""
    names = [name for name, _ in shadow.named_buffers() if "." not in name]
    if not names:
        return {}
    from safetensors import safe_open

    source = description.get("source")
    folder = subfolder or description.get("subfolder")
    filename = "diffusion_pytorch_model.safetensors"
    if not source:
        raise InvalidRequest(f"model {description['name']}'s VAE keeps {', '.join(names)} in its weights, and the "
                             "model names no weights source", field="config")  # fmt: skip
    local = Path(source).expanduser() / (folder or "") / filename
    try:
        if local.is_file():
            path = str(local)
        else:
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(source, filename, subfolder=folder)
        with safe_open(path, framework="pt") as weights:
            return {name: weights.get_tensor(name) for name in names if name in weights.keys()}
    except (OSError, ValueError) as exc:
        raise InvalidRequest(f"cannot read {', '.join(names)} of model {description['name']} from {source!r}: "
                             f"{exc}", field="config") from None  # fmt: skip


class RemoteVAE(ModelMixin):
    """A diffusers VAE whose ``decode`` runs on a latentq deployment.

    ``client``: a :class:`~latentq.Client`, an :class:`~latentq.HttpClient`, an ``http(s)://`` API
    URL, a Redis URL, or None for ``$LATENTQ_REDIS_URL``. ``model``: the latentq model that decodes.
    ``config``: the VAE's config (a dict, a ``config.json``, a directory or hub repo with
    ``subfolder``); by default the deployment's model's own. ``timeout``: seconds one decode may take.

    Differences from a local VAE: ``force_upcast`` is False (the worker picks its own precision); tiling is the
    deployment's choice unless ``enable_tiling()`` / ``disable_tiling()`` force it; ``encode`` runs as
    ``vae_input`` encode jobs (the posterior's parameters come back; the pipeline samples them itself).
    """

    def __init__(self, client: Client | HttpClient | str | None = None, model: str | None = None, *,
                 config: Any = None, subfolder: str | None = None, timeout: float = DEFAULT_TIMEOUT_S,
                 dtype: torch.dtype = torch.float32, api_key: str | None = None) -> None:  # fmt: skip
        super().__init__()
        if not model:
            raise InvalidRequest("RemoteVAE needs model=, the latentq model that decodes", field="model")
        self.client = open_client(client, api_key=api_key)
        self.model = model
        self.timeout = float(timeout)
        self.description = describe_model(self.client, model)
        shadow = _shadow(self.description, config, subfolder)
        values = dict(shadow.config)
        if "force_upcast" in values:
            values["force_upcast"] = False  # SDXL would upcast a local module's weights; there are none here
        if self.description.get("normalization") == "batch_norm":
            # FLUX.2 denormalises with vae.bn's running statistics, which are weights the worker holds: show the
            # pipeline an exact identity (mean 0, var 1, eps 0) and let the worker apply the real ones.
            values["batch_norm_eps"] = 0.0
            self.bn = torch.nn.BatchNorm2d(int(self.description["latent_channels"]) * 4, affine=False)
        self._internal_dict = FrozenDict(values)
        self._plain = {k: v for k, v in vars(shadow).items() if not k.startswith("_") and isinstance(v, _PLAIN)}
        for name, value in _weight_buffers(shadow, self.description, subfolder).items():
            self.register_buffer(name, value.to(dtype), persistent=False)  # moves with pipe.to, as the real ones
        # Moves with pipe.to(device, dtype): the device and dtype the pipeline sees.
        self.register_buffer("_anchor", torch.zeros(0, dtype=dtype), persistent=False)
        self.tile: bool | None = None

    @property
    def config(self) -> FrozenDict:
        return self._internal_dict

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    @property
    def dtype(self) -> torch.dtype:
        return self._anchor.dtype

    def __getattr__(self, name: str) -> Any:
        plain = self.__dict__.get("_plain") or {}
        if name in plain:  # the real class's plain attributes, e.g. temporal_compression_ratio
            return plain[name]
        return super().__getattr__(name)

    def __repr__(self) -> str:
        return f"RemoteVAE(model={self.model!r}, class={self.description.get('class')!r})"

    # --- what pipelines call ----------------------------------------------------------
    def enable_tiling(self, *args: Any, **kwargs: Any) -> None:
        self.tile = True

    def disable_tiling(self) -> None:
        self.tile = False

    def enable_slicing(self) -> None:
        """Workers batch and slice by their own memory budget: nothing to do here."""

    def disable_slicing(self) -> None:
        """As ``enable_slicing``."""

    @torch.no_grad()
    def encode(self, x: torch.Tensor, return_dict: bool = True) -> Any:
        """What ``vae.encode(x)`` returns to a pipeline: ``.latent_dist`` (a ``DiagonalGaussianDistribution``
        the pipeline samples with its own generator, or takes the mode of) for classes with a posterior,
        ``.latents`` for those without. One ``vae_input`` encode job per sample; the worker answers the
        posterior's raw parameters (``latentq.worker.vae_io``), so sampling happens here, as locally."""
        from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKLOutput
        from diffusers.models.autoencoders.autoencoder_tiny import AutoencoderTinyOutput
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        samples = x.detach().to("cpu", torch.float32).contiguous().split(1)
        jobs = [self.client.submit_encode(sample, self.model, vae_input=True) for sample in samples]
        raw = torch.cat([st_load(data)["latent"] for data in wait_and_read(jobs, self.timeout)])
        raw = raw.to(device=x.device, dtype=x.dtype)
        if raw.shape[1] == 2 * int(self.description["latent_channels"]):
            out: Any = AutoencoderKLOutput(latent_dist=DiagonalGaussianDistribution(raw))
            return out if return_dict else (out.latent_dist,)
        out = AutoencoderTinyOutput(latents=raw)
        return out if return_dict else (raw,)

    def forward(self, sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return self.decode(sample, **kwargs)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, *args: Any, return_dict: bool = True, generator: Any = None,
               **kwargs: Any) -> DecoderOutput | tuple[torch.Tensor]:  # fmt: skip
        """VAE-space latents (what the pipeline hands its VAE) -> the decode in [-1, 1], as a local VAE returns it."""
        del generator  # the latent distribution's sampling happens in encode, not here
        temb = kwargs.pop("temb", None)
        if args and isinstance(args[0], bool):
            return_dict = args[0]  # decode(z, False), AutoencoderKL's positional order
        elif args:
            temb = args[0]  # decode(z, timestep): LTX's order
        timesteps = None
        if temb is not None:
            if "decode_timestep" not in (self.description.get("options") or ()):
                raise UnsupportedFormat(f"model {self.model} has no timestep-conditioned decode (vae.decode(z, temb))",
                                        field="temb")  # fmt: skip
            # LTX's decoders: each sample's timestep travels as its job's decode_timestep (the pipeline has
            # mixed its decode noise in already; the worker adds none to vae_input latents)
            timesteps = torch.as_tensor(temb, dtype=torch.float32).flatten().cpu()
            timesteps = timesteps.expand(z.shape[0]) if timesteps.numel() == 1 else timesteps
        sample = self.decode_remote(z, timesteps)
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    def decode_remote(self, z: torch.Tensor, timesteps: torch.Tensor | None = None) -> torch.Tensor:
        latents, options = vae_space_request(z, self.description)
        if self.tile is not None:
            options["tile"] = self.tile
        # Samples keep their batch dimension of 1: a (C, f, h, w) video sample would read as a batch of images.
        samples = list(latents.split(1))
        if timesteps is None:
            jobs = self.client.submit_many(samples, self.model, output_format="tensor", **options)
        else:  # one job per sample: each carries its own timestep
            jobs = [self.client.submit(sample, self.model, "tensor", decode_timestep=float(timestep), **options)
                    for sample, timestep in zip(samples, timesteps, strict=True)]  # fmt: skip
        images = [st_load(data)["image"] for data in wait_and_read(jobs, self.timeout)]
        sample = torch.stack(images)  # vae.decode's raw output, in [0, 1] terms (unclamped)
        if self.description.get("output_range", "-1,1") == "-1,1":
            sample = sample * 2 - 1
        return sample.to(device=z.device, dtype=z.dtype)


def wait_and_read(jobs: list[Any], timeout: float) -> list[bytes]:
    """Each job's first result object; on timeout, the jobs not started yet are canceled."""
    deadline = time.monotonic() + timeout
    try:
        out = []
        for job in jobs:
            job.wait(max(deadline - time.monotonic(), 0.0))
            out.append(job.read())
        return out
    except JobTimeout:
        for job in jobs:
            try:
                job.cancel()  # nobody will read it: free its queue slot
            except LatentqError:
                pass  # started or ended: let it finish
        raise JobTimeout(f"not decoded within {timeout:g} s (jobs {', '.join(j.id for j in jobs)}); "
                         "queued jobs were canceled") from None  # fmt: skip
