"""bench/chaos.py, bounded: kills, a freeze past the dead-worker bound and a Redis crash under `latentq up`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from conftest import TAEF2_DIR

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.timeout(420), pytest.mark.integration]


def load_chaos():
    spec = importlib.util.spec_from_file_location("latentq_bench_chaos", REPO / "bench" / "chaos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_job_ends_once_through_kills_a_freeze_and_a_redis_crash(monkeypatch, tmp_path):
    chaos = load_chaos()
    monkeypatch.chdir(tmp_path)
    args = chaos.parse_args(["--jobs", "100", "--workers", "3", "--heartbeat", "1", "--redis-down", "3",
                             "--timeout", "300", "--taef2", str(TAEF2_DIR)])  # fmt: skip
    lines: list[str] = []

    summary = chaos.run(args, log=lines.append)

    report = "\n".join(lines)
    assert summary["submitted"] == summary["finished"] == 100, report
    assert (summary["lost"], summary["failed"], summary["duplicated"], summary["wrong_image"]) == (0, 0, 0, 0), report
    assert summary["done_messages"] <= 100, report  # at most one each (a listener reconnecting may miss some)
    assert summary["workers_exited_in_redis_outage"] == 0, report
    assert set(summary["api_during_outage"].values()) == {"503 Unavailable"}, report
    held = {fault["fault"].split(" (")[0].split(",")[0]: fault["held"] for fault in summary["faults"]}
    assert held["SIGSTOP 15 s"] > 0 and held["redis-server SIGKILL"] > 0, report  # the faults hit jobs in hand
