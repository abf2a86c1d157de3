"""The asynchronous form of the drop-in: queue each generation's latents, keep generating, collect later.

    queue = latentq.RemoteDecodeQueue("http://latentq:8000", model="flux1")
    for prompt in prompts:
        queue.generate(pipe, prompt=prompt, height=768, width=1024)   # pipe(..., output_type="latent"), then submit
    images = queue.images()                                           # or queue.urls(), queue.results()

A pipeline's ``output_type="latent"`` result is in the pipeline's own layout and scaling (FLUX's packed
tokens, Wan's normalised latents, ...): exactly what a latentq model of that family decodes with its own
factors. What the layout cannot tell (a packed latent's image height and width) is taken from the call, or
from the pipeline's defaults as the pipeline computes them.
"""

from __future__ import annotations

import io
import time
from typing import Any

import torch

from ..core.request import IMAGE_FORMATS, ResultObject
from ..errors import InvalidLatent, InvalidRequest, UnsupportedFormat
from ..producer import Client, HttpClient
from .vae import DEFAULT_TIMEOUT_S, RemoteVAE, describe_model, open_client

__all__ = ["RemoteDecodeQueue", "layout_options", "pipeline_latents", "submit_pipeline_latents"]

TOKEN_LAYOUTS = ("packed", "flux2", "video_tokens")  # the image size is not in the latent's shape


def pipeline_latents(output: Any) -> torch.Tensor:
    """The latents of a pipeline call made with ``output_type="latent"`` (``.images``, ``.frames`` or a tuple)."""
    for value in (getattr(output, "images", None), getattr(output, "frames", None)):
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if isinstance(output, torch.Tensor):
        return output
    raise InvalidLatent(f"no latent tensor in the pipeline's output {type(output).__name__}: call it with "
                        'output_type="latent"', field="latents")  # fmt: skip


def layout_options(pipe: Any, description: dict[str, Any], height: int | None = None,
                   width: int | None = None) -> dict[str, Any]:  # fmt: skip
    """The call's image height and width (the families that read them: packed tokens, SANA's binning, ...);
    for token layouts, whose shape does not tell the size, the pipeline's default when the call gave none
    (``default_sample_size * vae_scale_factor``, as the pipelines compute it)."""
    if description.get("layout") in TOKEN_LAYOUTS and not (height and width):
        default = None
        if pipe is not None and getattr(pipe, "default_sample_size", None) and getattr(pipe, "vae_scale_factor", None):
            default = int(pipe.default_sample_size) * int(pipe.vae_scale_factor)
        height, width = height or default, width or default
        if not height or not width:
            raise InvalidRequest(f"model {description['name']} takes {description.get('layout')} latents: give the "
                                 "call's height and width", field="height")  # fmt: skip
    return {name: int(value) for name, value in (("height", height), ("width", width)) if value}


def _target(pipe: Any, client: Any, model: str | None, api_key: str | None) -> tuple[Client | HttpClient, str]:
    """The client and model: given, else the pipeline's RemoteVAE's."""
    vae = getattr(pipe, "vae", None)
    if isinstance(vae, RemoteVAE):
        return (vae.client if client is None else open_client(client, api_key=api_key)), model or vae.model
    if not model:
        raise InvalidRequest("give model=, the latentq model that decodes these latents", field="model")
    return open_client(client, api_key=api_key), model


def submit_pipeline_latents(pipe: Any, latents: Any, client: Client | HttpClient | str | None = None, *,
                            model: str | None = None, height: int | None = None, width: int | None = None,
                            output_format: str = "png", api_key: str | None = None, **options: Any) -> list[Any]:  # fmt: skip
    """Submit a pipeline's ``output_type="latent"`` result (or its output object): one job per sample.

    ``height`` / ``width``: the pipeline call's (needed by packed layouts; default: the pipeline's
    default size). ``options``: those of ``Client.submit`` (quality, fps, metadata, priority, ...).
    Returns the jobs (``Job`` or ``HttpJob``), to ``wait()`` on later.
    """
    client_, model_ = _target(pipe, client, model, api_key)
    return _submit(pipe, latents, client_, describe_model(client_, model_), height, width, output_format, options)


def _submit(pipe: Any, latents: Any, client: Client | HttpClient, description: dict[str, Any], height: int | None,
            width: int | None, output_format: str, options: dict[str, Any]) -> list[Any]:  # fmt: skip
    tensor = pipeline_latents(latents).detach().to("cpu")
    extra = layout_options(pipe, description, height, width)
    return client.submit_many(tensor, description["name"], output_format=output_format, **extra, **options)


class RemoteDecodeQueue:
    """Submit as the pipeline produces latents; collect every job's results, in submission order, later."""

    def __init__(self, client: Client | HttpClient | str | None = None, model: str | None = None, *,
                 output_format: str = "png", timeout: float = DEFAULT_TIMEOUT_S, api_key: str | None = None,
                 **options: Any) -> None:  # fmt: skip
        self.client = None if client is None else open_client(client, api_key=api_key)
        self.model = model
        self.output_format = output_format
        self.timeout = float(timeout)
        self.options = options
        self.jobs: list[Any] = []
        self._descriptions: dict[tuple[int, str], dict[str, Any]] = {}  # GET /v1/models once per client and model

    def submit(self, pipe: Any, latents: Any, *, height: int | None = None, width: int | None = None,
               **options: Any) -> list[Any]:  # fmt: skip
        """Queue one call's latents (``options`` add to the queue's); returns that call's jobs."""
        client, description = self._described(pipe)
        jobs = _submit(pipe, latents, client, description, height, width, self.output_format,
                       {**self.options, **options})  # fmt: skip
        self.jobs.extend(jobs)
        return jobs

    def _described(self, pipe: Any) -> tuple[Client | HttpClient, dict[str, Any]]:
        """The client (the queue's, else the pipeline's RemoteVAE's, else one from the environment, kept) and
        the model's description."""
        if self.client is None and not isinstance(getattr(pipe, "vae", None), RemoteVAE):
            self.client = open_client(None)
        client, model = _target(pipe, self.client, self.model, None)
        key = (id(client), model)
        if key not in self._descriptions:
            self._descriptions[key] = describe_model(client, model)
        return client, self._descriptions[key]

    def generate(self, pipe: Any, *args: Any, **kwargs: Any) -> list[Any]:
        """Run ``pipe(*args, **kwargs)`` with ``output_type="latent"`` and queue its latents with the call's size
        and the call's values of the options the model's family reads (``num_frames``, ``decode_timestep``, ...)."""
        kwargs["output_type"] = "latent"
        output = pipe(*args, **kwargs)
        reads = self._described(pipe)[1].get("options") or ()
        options = {name: kwargs[name] for name in reads if kwargs.get(name) is not None}
        return self.submit(pipe, output, height=kwargs.get("height"), width=kwargs.get("width"), **options)

    def results(self, timeout: float | None = None) -> list[list[ResultObject]]:
        """Every job's result records (URL, size, ...), waiting for those not done (``timeout`` s for them all);
        JobFailed / JobTimeout."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        return [job.wait(max(deadline - time.monotonic(), 0.0)) for job in self.jobs]

    def urls(self, timeout: float | None = None) -> list[str]:
        """The first result URL of every job."""
        return [results[0].url for results in self.results(timeout)]

    def read(self, timeout: float | None = None) -> list[bytes]:
        """The first result object of every job, as bytes."""
        self.results(timeout)
        return [job.read() for job in self.jobs]

    def images(self, timeout: float | None = None) -> list[Any]:
        """Every job's image as a PIL image (image output formats)."""
        from PIL import Image

        if self.output_format.lower() not in (*IMAGE_FORMATS, "jpg"):
            raise UnsupportedFormat(f"images() reads image outputs; this queue makes {self.output_format!r}: "
                                    "use read() or urls()", field="output_format")  # fmt: skip
        pictures = []
        for data in self.read(timeout):
            picture = Image.open(io.BytesIO(data))
            picture.load()
            pictures.append(picture)
        return pictures
