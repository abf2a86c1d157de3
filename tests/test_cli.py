"""The command line: submit --wait --out, status, up's start and stop, help, and the demo (the README's main command)."""

import argparse
import logging
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from conftest import IMAGES_DIR, REPO
from safetensors.torch import save_file

from latentq.local.redis_server import free_port

pytestmark = [pytest.mark.timeout(240), pytest.mark.integration]


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
    assert re.search(r"worker cli-worker: \w+, models taef2, 3 ok", status.stdout), status.stdout  # named once
    assert "sd15" not in status.stdout  # no row for a model without jobs or workers
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


def test_status_lists_only_models_with_jobs_or_workers(env):
    from latentq import Client

    empty = run(env, "status")
    assert empty.returncode == 0, empty.stderr
    header, *rows, deployment = empty.stdout.splitlines()
    assert rows == [] and header.startswith("model ")  # the header alone, then the deployment
    assert deployment.startswith(f"deployment: Redis {env['LATENTQ_REDIS_URL']} (--redis-url or $LATENTQ_REDIS_URL)")
    Client().submit(torch.randn(32, 4, 4), model="taef2")
    queued = run(env, "status")
    rows = queued.stdout.splitlines()[1:-1]
    assert len(rows) == 1 and re.match(r"taef2\s+1\s+0\s+0\s+0\s+0\s+0$", rows[0]), queued.stdout


def test_submit_over_the_api_does_not_log_each_request(procs, env, tmp_path):
    procs.worker("taef2")
    url = procs.api()
    save_file({"latent": torch.randn(2, 32, 4, 4)}, str(tmp_path / "two.safetensors"))
    done = run(env, "submit", str(tmp_path / "two.safetensors"), "--model", "taef2", "--api", url, "--wait")
    assert done.returncode == 0, done.stderr
    assert "HTTP Request" not in done.stderr and "httpx" not in done.stderr, done.stderr


def test_chatty_http_loggers_speak_only_at_debug():
    from latentq.logs import configure_logging

    root, chatty = logging.getLogger(), [logging.getLogger("httpx"), logging.getLogger("httpcore")]
    saved = root.handlers[:], root.level, [logger.level for logger in chatty]
    try:
        configure_logging("INFO")
        assert [logger.getEffectiveLevel() for logger in chatty] == [logging.WARNING] * 2
        configure_logging("debug")
        assert [logger.getEffectiveLevel() for logger in chatty] == [logging.DEBUG] * 2
    finally:  # leave pytest's logging as it was
        root.handlers[:], root.level = saved[0], saved[1]
        for logger, level in zip(chatty, saved[2]):
            logger.setLevel(level)


@pytest.mark.timeout(120)
def test_help_and_argument_errors_do_not_import_torch():
    """The real check is the module list; the wall-clock bound is generous (under 1 s is usual)."""
    code = "import sys, latentq.cli; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers')" \
           " or m.startswith(('latentq.api', 'latentq.worker', 'latentq.producer'))))"  # fmt: skip
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert loaded.returncode == 0 and loaded.stdout.strip() == "[]", loaded.stdout + loaded.stderr
    for args, expected in [(["--help"], 0), (["up", "--help"], 0), (["up", "--workers", "0"], 2)]:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            done = run(None, *args, timeout=60)
            times.append(time.perf_counter() - start)
            assert done.returncode == expected, done.stderr
        assert statistics.median(times) < 3.0, (args, times)


def test_every_option_has_help():
    from latentq.cli import build_parser

    def check(parser: argparse.ArgumentParser, where: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    check(sub, f"{where} {name}")
            else:
                assert action.help, f"{where}: {action.option_strings or action.dest} has no help"

    check(build_parser(), "latentq")


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(child) for child in (task / "children").read_text().split()}
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.timeout(180)
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_up_stops_workers_api_and_redis_on_ctrl_c(env, tmp_path, how):
    """A terminal's Ctrl-C (SIGINT to the whole process group) or a service manager's SIGTERM (to `up` alone):
    exit 0, no traceback, nothing left running."""
    env = {k: v for k, v in env.items() if k != "LATENTQ_REDIS_URL"}  # an embedded Redis of its own
    port = free_port()
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        up = subprocess.Popen([sys.executable, "-m", "latentq", "up", "--workers", "1", "--port", str(port)],
                              env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while "latentq is up" not in log.read_text():  # after /healthz answers and the worker registered
            assert up.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        children = _children(up.pid)
        workers = [pid for pid in children if b" worker " in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")]
        assert len(children) == 2 and len(workers) == 1, children  # Redis and one worker
        threads = str(max(1, (os.cpu_count() or 1) // 1)).encode()
        assert b"\0--torch-threads\0" + threads + b"\0" in Path(f"/proc/{workers[0]}/cmdline").read_bytes()
        if how == "ctrl-c":
            os.killpg(up.pid, signal.SIGINT)
        else:
            up.send_signal(signal.SIGTERM)
        assert up.wait(90) == 0, log.read_text()
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
    output = log.read_text()
    assert "Traceback" not in output and "stopping..." in output, output
    assert "unreachable" not in output, output  # Redis outlived the workers and the API
    assert not [pid for pid in children if _alive(pid)], output
