"""bench/gpu_sweep.py's code paths on the CPU: tiny configs (--device cpu --small), a few combinations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # starts processes


SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_sweep.py"


@pytest.mark.timeout(120)
def test_gpu_sweep_smoke_run_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "sweep.md"
    args = ["--device", "cpu", "--small", "--quick", "--models", "sd15,flux1", "--batches", "1,2", "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=100, env=env,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "| px " in done.stdout and "9 tiles" in done.stdout  # the markdown table went to stdout too
    assert out.read_text() == done.stdout.rstrip("\n") + "\n"

    data = json.loads(out.with_suffix(".json").read_text())
    assert data["meta"]["device_name"] == "cpu" and "--small" in data["meta"]["command"]
    rows = data["rows"]
    # 2 models x (32 px untiled; 64 px untiled and tiled: 32 px fits one 32-px tile) x 2 layouts x 2 batches
    assert len(rows) == 2 * 3 * 2 * 2
    assert {(r["model"], r["px"], r["tiled"]) for r in rows} == {
        (m, px, tiled) for m in ("sd15", "flux1") for px, tiled in ((32, False), (64, False), (64, True))
    }
    assert {r["memory_format"] for r in rows} == {"contiguous", "channels_last"}
    assert {r["dtype"] for r in rows} == {"float32"} and {r["batch"] for r in rows} == {1, 2}
    for r in rows:
        assert r["status"] == "ok", r
        assert r["ms_per_call"] > 0 and r["first_call_ms"] > 0 and r["calls"] >= 2
        assert r["ms_per_image"] == pytest.approx(r["ms_per_call"] / r["batch"])
        assert r["images_per_s"] == pytest.approx(1000 / r["ms_per_image"])
        assert r["tiles"] == (9 if r["tiled"] else 1)  # a 8x8 latent in 4x4 tiles, 3 apart
        assert r["peak_mib"] is None  # no CUDA: no allocator statistics
        assert r["speedup_vs_b1"] > 0 and (r["batch"] > 1 or r["speedup_vs_b1"] == 1.0)


def test_gpu_sweep_without_cuda_exits_2() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is here")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2 and "needs a CUDA GPU" in done.stderr
