"""bench/scaleout.py end to end, small: K = 1, 2 real workers with the simulated GPU, a short window.

Checks the report's shape and that every submitted job finished exactly once (one successful result
in RQ's history, one output object, counted once by the workers); not the numbers, which belong to a
quiet machine and a full run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "scaleout.py"


@pytest.mark.bench
@pytest.mark.timeout(300)
def test_scaleout_smoke_k1_k2(tmp_path: Path) -> None:
    out = tmp_path / "scaleout.json"
    args = ["--workers", "1,2", "--batch-ms", "100", "--warmup", "1", "--window", "2", "--json", str(out),
            "--work-dir", str(tmp_path)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=280, env=env,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]

    data = json.loads(out.read_text())
    assert data["meta"]["command"].startswith("python bench/scaleout.py --workers 1,2")
    assert data["meta"]["batch_ms"] == 100 and data["meta"]["netns"] is False
    rows = data["rows"]
    assert [r["k"] for r in rows] == [1, 2]
    for row in rows:
        checks = row["checks"]
        assert checks["submitted"] > 0, row
        assert checks["exactly_once"], checks
        assert checks["finished"] == checks["submitted"] == checks["worker_finished"] == checks["worker_decoded"]
        assert checks["successes_not_one"] == 0 and checks["objects_not_one"] == 0 and checks["queued_left"] == 0
        assert row["jobs_in_window"] > 0 and row["jobs_per_s"] > 0
        assert 1 <= row["mean_batch"] <= 8
        assert row["ideal_jobs_per_s"] == pytest.approx(row["k"] * 8 * 1000 / 100)
        assert set(row["cpu_cores"]) >= {"workers", "redis", "producer", "api"}
    assert rows[0]["efficiency"] == pytest.approx(1.0)
    assert rows[1]["efficiency"] == pytest.approx(rows[1]["jobs_per_s"] / (2 * rows[0]["jobs_per_s"]))

    # The markdown table went to stdout: a header and one line per K, same columns each.
    table = [line for line in done.stdout.splitlines() if line.startswith("|")]
    assert table[0].startswith("| K ") and "efficiency" in table[0] and "exactly once" in table[0]
    assert len(table) == 2 + len(rows)
    assert {line.count("|") for line in table} == {table[0].count("|")}
    assert [line.split("|")[1].strip() for line in table[2:]] == ["1", "2"]
    assert data["markdown"] in done.stdout
