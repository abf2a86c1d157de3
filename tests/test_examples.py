"""Every example runs as a script at small sizes, on its own stack or against a running latentq, and exits 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from tiny_configs import CONFIGS

pytestmark = pytest.mark.integration  # starts processes


EXAMPLES = REPO / "examples"


def run_example(name: str, *args: str, env: dict[str, str] | None = None, timeout: float = 240) -> str:
    """Run one example; assert it exits 0 and return its output."""
    if env is None:  # a self-started stack: nothing of the test's deployment may leak in
        env = {k: v for k, v in os.environ.items() if not k.startswith("LATENTQ_")}
    done = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=REPO)  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    return output


@pytest.fixture
def tiny_models(models_file: Path, tmp_path: Path) -> Path:
    lines = [models_file.read_text()]
    for name in ("sd15", "hunyuanvideo"):
        (tmp_path / f"{name}.json").write_text(json.dumps(CONFIGS[name]))
        lines.append(f'[models.{name}]\nconfig = "{name}.json"\nseed = 0\n')
    models_file.write_text("\n".join(lines))
    return models_file


@pytest.mark.timeout(300)
def test_decode_in_generation_loop_on_its_own_stack(tmp_path):
    output = run_example("decode_in_generation_loop.py", "--count", "2", "--size", "64", "--out", str(tmp_path))
    assert "encoded 2 photos" in output and "decoded 2 images with taef2" in output
    assert output.count("dB against the photo") == 2 and len(list(tmp_path.glob("*.png"))) == 2
    output = run_example("decode_in_generation_loop.py", "--tiny", "--count", "2", "--size", "32")
    assert "decoded 2 images with sd15" in output


@pytest.mark.timeout(300)
def test_decode_in_generation_loop_over_http(procs, env):
    procs.worker("taef2")
    output = run_example("decode_in_generation_loop.py", "--api", procs.api(), "--count", "1", "--size", "64", env=env)
    assert "encoded 1 photos" in output and "decoded 1 images with taef2" in output


@pytest.mark.timeout(300)
def test_queue_many_generations_with_two_workers(tmp_path):
    output = run_example("queue_many_generations.py", "--workers", "2", "--count", "6", "--step-ms", "10",
                         "--out", str(tmp_path))  # fmt: skip
    assert "6 images generated" in output and output.count("decoded by ") >= 6
    assert len(list(tmp_path.glob("*.png"))) == 6


@pytest.mark.timeout(300)
def test_video_to_mp4_on_its_own_stack_and_over_http(procs, env, tiny_models, tmp_path):
    output = run_example("video_to_mp4.py", "--frames", "2", "--out", str(tmp_path / "own.mp4"))
    assert "latentq.remote_decode" in output and "5 frames of 48x32" in output
    assert (tmp_path / "own.mp4").read_bytes()[4:8] == b"ftyp"
    procs.worker("hunyuanvideo", extra=("--no-previews",))
    output = run_example("video_to_mp4.py", "--api", procs.api(), "--frames", "2", env=env)
    assert "diffusers' remote_decode" in output and "5 frames of 48x32" in output


@pytest.mark.timeout(300)
def test_remote_decode_diffusers_on_its_own_stack_and_on_a_redis(procs, env, tiny_models):
    output = run_example("remote_decode_diffusers.py", "--size", "32")
    assert "remote_decode -> jpeg 32x32" in output and "(1, 4, 4, 4)" in output
    assert "all remote_decode / remote_encode calls answered by latentq" in output
    procs.worker("sd15", extra=("--no-previews",))
    output = run_example("remote_decode_diffusers.py", "--redis-url", env["LATENTQ_REDIS_URL"], "--flux-model", "",
                         "--size", "32", env=env)  # fmt: skip
    assert "all remote_decode / remote_encode calls answered by latentq" in output


@pytest.mark.timeout(600)
def test_drop_in_remote_vae_on_its_own_stack_and_over_http(procs, env, tiny_models, tmp_path):
    output = run_example("drop_in_remote_vae.py", "--size", "32", "--out", str(tmp_path / "own"))
    assert "vae=RemoteVAE(model='sd15'" in output and "32x32 image" in output
    assert "max difference 0 of 255" in output or "max difference 1 of 255" in output
    assert (tmp_path / "own" / "remote.png").is_file()
    procs.worker("sd15", extra=("--no-previews",))  # the tests' tiny sd15: the example's VAE weights too
    output = run_example("drop_in_remote_vae.py", "--api", procs.api(), "--size", "32", env=env)
    assert "decoded on latentq with a one-line change" in output and "of 255" in output


@pytest.mark.timeout(300)
def test_queue_pipeline_latents_on_its_own_stack(tmp_path):
    output = run_example("queue_pipeline_latents.py", "--count", "2", "--out", str(tmp_path))
    assert output.count("latents queued as job") == 2 and output.count("/v1/results/") == 2
    assert "2 images of 64x48" in output and len(list(tmp_path.glob("*.png"))) == 2
    assert "max difference 0 of 255" in output or "max difference 1 of 255" in output
