"""latentq: queued, batched VAE decoding for latent diffusion models.

    from latentq import Client
    job = Client("redis://localhost:6379/0").submit(latent, model="taef2")
    results = job.wait()
"""

__version__ = "0.1.0"

from .errors import InvalidRequest, JobFailed, JobTimeout, LatentqError, QueueFull  # noqa: E402
from .producer import Client, HttpClient, Job  # noqa: E402
from .remote import remote_decode  # noqa: E402
from .spec import JobStatus, ResultObject  # noqa: E402

__all__ = [
    "Client",
    "HttpClient",
    "InvalidRequest",
    "Job",
    "JobFailed",
    "JobStatus",
    "JobTimeout",
    "LatentqError",
    "QueueFull",
    "ResultObject",
    "__version__",
    "remote_decode",
]
