"""The command line: submit --wait --out, status, and the demo (the README's main command)."""

import re
import subprocess
import sys

import pytest
import torch
from conftest import IMAGES_DIR, REPO
from safetensors.torch import save_file

pytestmark = pytest.mark.timeout(240)


def run(env, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", "latentq", *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_submit_wait_out_and_status(procs, env, tmp_path):
    procs.worker("taef2", name="cli-worker")
    save_file({"latent": torch.randn(2, 32, 4, 4)}, str(tmp_path / "two.safetensors"))
    save_file({"latent": torch.randn(32, 4, 4)}, str(tmp_path / "one.safetensors"))
    out = tmp_path / "out"
    done = run(env, "submit", str(tmp_path / "two.safetensors"), str(tmp_path / "one.safetensors"),
               "--model", "taef2", "--wait", "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["one-latent-0.png", "two-latent-0.png", "two-latent-1.png"]
    job_id = done.stdout.split("\n")[0].split("\t")[1]
    status = run(env, "status")
    assert re.search(r"taef2\s+0\s+0\s+3\s+0\s+1", status.stdout), status.stdout
    assert "cli-worker" in status.stdout
    one = run(env, "status", job_id)
    assert '"status": "finished"' in one.stdout


def test_bad_submit_exits_with_a_message(procs, env, tmp_path):
    save_file({"latent": torch.randn(4, 4, 4)}, str(tmp_path / "bad.safetensors"))
    done = run(env, "submit", str(tmp_path / "bad.safetensors"), "--model", "taef2")
    assert done.returncode == 2 and "expects 32" in done.stderr


def test_help_lists_every_command():
    out = run(None, "--help").stdout
    for command in ["up", "worker", "api", "submit", "status", "demo"]:
        assert command in out


def test_demo_decodes_every_photograph_above_28_db(redis_url, tmp_path):
    """README's main command, offline, with the models file the README names."""
    env = {**__import__("os").environ, "LATENTQ_MODELS": str(REPO / "models.local.toml"), "LATENTQ_STORE": str(tmp_path / "r")}
    env.pop("LATENTQ_REDIS_URL", None)  # the demo starts its own embedded Redis
    done = run(env, "--log-level", "WARNING", "demo", "--images", str(IMAGES_DIR), "--out", str(tmp_path / "demo"), timeout=200)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = re.findall(r"^(\S+\.png)\s+\d+x\d+\s+([\d.]+) dB", done.stdout, re.M)
    assert sorted(name for name, _ in rows) == sorted(p.name for p in IMAGES_DIR.glob("*.png"))
    assert all(float(value) >= 28 for _, value in rows)
    assert "throughput:" in done.stdout
