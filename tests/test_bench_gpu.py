"""bench/gpu.py's code paths on the CPU (--device cpu --small): every model's L, A and Q rows, finite numbers."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.bench, pytest.mark.integration]  # starts Redis and a worker

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu.py"
LABELS = ("SD 1.5 512x512 PNG", "SDXL 1024x1024 JPEG", "FLUX.1 1024x1024 JPEG", "Wan 2.1 480x832 x17 frames MP4")


@pytest.mark.timeout(240)
def test_gpu_bench_smoke_run_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu.md"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--small", "--out", str(out)],
                          capture_output=True, text=True, timeout=220, env=env, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    report = out.read_text()
    assert report == done.stdout.rstrip("\n") + "\n"  # printed and written
    assert "--small smoke run" in report
    rows = {}
    for line in report.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 9 and cells[1] in ("L", "A", "Q"):
            rows[cells[0], cells[1]] = cells
    assert set(rows) == {(label, kind) for label in LABELS for kind in "LAQ"}
    for (label, kind), cells in rows.items():
        rate = float(re.match(r"([0-9.]+) (images|frames)/s$", cells[3]).group(1))
        assert math.isfinite(rate) and rate > 0, (label, kind, cells)
        assert (cells[3].endswith("frames/s")) == label.startswith("Wan")
        if kind == "Q":  # Q/L and Q/A: finite ratios
            assert all(math.isfinite(float(c)) and float(c) > 0 for c in cells[5:7]), cells
    for section in ("== SD 1.5", "== Wan 2.1"):
        assert section in done.stderr  # elapsed per section
    assert re.search(r"L float32, batch \d", done.stderr)
