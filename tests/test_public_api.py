import pytest

import latentq

pytestmark = pytest.mark.timeout(30)


@pytest.mark.timeout(180)  # resolving every name imports diffusers (RemoteVAE): slow on a busy machine
def test_public_names_are_pinned():
    assert sorted(latentq.__all__) == sorted([
        "AsyncHttpClient", "AsyncHttpJob", "Client", "HttpClient", "HttpJob", "Job", "JobStatus", "ResultObject",
        "RemoteDecodeQueue", "RemoteVAE", "__version__", "remote_decode", "submit_pipeline_latents",
        # every exception of the tree, so callers catch at any level from `latentq`
        "ConfigError", "InvalidLatent", "InvalidRequest", "JobConflict", "JobFailed", "JobNotFound", "JobTimeout",
        "LatentTooLarge", "LatentqError", "ModelLoadError", "QueueFull", "RateLimited", "StoreError",
        "Unavailable", "UnknownModel", "UnsupportedFormat",
    ])  # fmt: skip
    for name in latentq.__all__:
        assert hasattr(latentq, name)


def test_exception_tree():
    from latentq import errors

    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.LatentqError)
        assert getattr(latentq, name) is getattr(errors, name)  # exported from the package too
    assert issubclass(errors.InvalidLatent, ValueError)


@pytest.mark.integration  # runs the CLI / a fresh interpreter
def test_producer_does_not_import_the_worker_or_diffusers():
    import subprocess
    import sys

    code = "import sys, latentq; latentq.Client; print(any(m.startswith(('diffusers', 'latentq.worker')) for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
