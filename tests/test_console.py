"""The console at ``/``, ``GET /v1/jobs``, ``GET /v1/overview`` and the offline API docs.

The browser tests drive Debian's ``chromium`` with Playwright (from PyPI; no browser download) against a
real ``latentq up`` (embedded Redis, one worker, the taef2 model). Every URL that is not latentq's is
aborted and recorded, so the pages must work with the network off and may not even try to reach out.

Screenshots go to the test's temporary directory; set ``LATENTQ_CONSOLE_SCREENSHOTS=docs`` to refresh
README's (``docs/console-*.png``).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from conftest import IMAGES_DIR, REPO, TAEF2_DIR
from PIL import Image
from redis import Redis
from safetensors.torch import save as safetensors_bytes
from tiny_configs import CONFIGS

from latentq.local.redis_server import free_port
from latentq.state.keys import recent_jobs_key

pytestmark = pytest.mark.integration  # latentq up, the API, a browser

CHROMIUM = shutil.which("chromium")
try:
    from playwright.sync_api import sync_playwright
except ImportError:  # the test extra not installed
    sync_playwright = None



def browser_test(function):
    """Marked ``browser``; skipped, with the reason, only where chromium or playwright is missing (CI has both)."""
    function = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                                  "(apt-get install chromium)")(function)  # fmt: skip
    function = pytest.mark.skipif(sync_playwright is None, reason="playwright is not installed "
                                  "(pip install -e '.[test]')")(function)  # fmt: skip
    return pytest.mark.browser(function)

VIEWPORT = {"width": 1200, "height": 800}
PHOTOS = ("astronaut", "chelsea", "coffee")


def _png(name: str, size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.open(IMAGES_DIR / f"{name}.png").convert("RGB").resize(size).save(out, "PNG")
    return out.getvalue()


def _as_file(name: str, data: bytes, kind: str) -> dict[str, str]:
    return {"name": name, "type": kind, "data": base64.b64encode(data).decode()}


# What a drop onto the page's drop zone carries: real File objects in a DataTransfer.
DATA_TRANSFER = """(files) => {
  const transfer = new DataTransfer();
  for (const f of files) {
    const bytes = Uint8Array.from(atob(f.data), (c) => c.charCodeAt(0));
    transfer.items.add(new File([bytes], f.name, { type: f.type }));
  }
  return transfer;
}"""

THUMBNAIL_LOADED = """(id) => {
  const img = document.querySelector(`.card[data-job-id="${id}"][data-status="finished"] img`);
  return Boolean(img && img.complete && img.naturalWidth > 0);
}"""

VIDEO_FRAME_SHOWN = """(id) => {
  const video = document.querySelector(`.card[data-job-id="${id}"][data-status="finished"] video`);
  return Boolean(video && video.readyState >= 2 && video.videoWidth > 0);
}"""

# Mean absolute difference (0-255) of the round trip's two pictures, drawn at the same size.
ROUND_TRIP_DIFFERENCE = """() => {
  const [original, decoded] = [".roundtrip-original", ".roundtrip-decoded"].map((s) => document.querySelector(s));
  const pixels = (img) => {
    const canvas = document.createElement("canvas");
    canvas.width = original.naturalWidth; canvas.height = original.naturalHeight;
    const context = canvas.getContext("2d");
    context.drawImage(img, 0, 0, canvas.width, canvas.height);
    return context.getImageData(0, 0, canvas.width, canvas.height).data;
  };
  const [a, b] = [pixels(original), pixels(decoded)];
  let total = 0;
  for (let i = 0; i < a.length; i += 4) total += Math.abs(a[i] - b[i]) + Math.abs(a[i + 1] - b[i + 1]) + Math.abs(a[i + 2] - b[i + 2]);
  return { difference: total / (3 * a.length / 4), widths: [original.naturalWidth, decoded.naturalWidth] };
}"""


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """A real ``latentq up``: its own embedded Redis, one taef2 worker, the API on a free port.

    Yields (API origin, Redis URL)."""
    root = tmp_path_factory.mktemp("console")
    # taef2 (real weights), and a video model: diffusers' Wan VAE, shrunken, random weights (tests/tiny_configs.py)
    (root / "wan.json").write_text(json.dumps(CONFIGS["wan"]))
    (root / "models.toml").write_text(f'[models.taef2]\nsource = "{TAEF2_DIR}"\n\n[models.wan]\nconfig = "wan.json"\nseed = 0\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATENTQ_")}
    env.update(LATENTQ_MODELS=str(root / "models.toml"), LATENTQ_STORE=str(root / "results"), OMP_NUM_THREADS="1",
               XDG_RUNTIME_DIR=str(root / "run"),  # its state file (latentq.config): this test's own, never a real one's
               LATENTQ_RECORD_TTL="0")  # finished jobs answer from their records in the store, as after a minute
    port = free_port()
    log = root / "up.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "latentq", "up", "--workers", "1", "--port", str(port),
                                    "--model", "taef2", "--model", "wan", "--max-wait-ms", "50"], env=env,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 150
        while "latentq is up" not in log.read_text():  # after /healthz answers and the worker registered
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        redis_url = re.search(r"Redis (redis://\S+),", log.read_text()).group(1)
        yield f"http://127.0.0.1:{port}", redis_url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture
def up(deployment) -> str:
    return deployment[0]


@pytest.fixture(scope="module")
def chromium():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()


class Offline:
    """A browser page that may reach ``origin`` only: anything else is aborted and recorded."""

    def __init__(self, browser, origin: str) -> None:
        self.origin = origin
        self.requested: list[str] = []
        self.blocked: list[str] = []
        self.errors: list[str] = []
        self.context = browser.new_context(viewport=VIEWPORT)
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.set_default_timeout(120_000)  # a bound for a loaded machine, never a wait in itself
        self.page.on("request", lambda request: self.requested.append(request.url))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))

    def ours(self, url: str) -> bool:
        # blob: URLs are the page's own objects (a dropped file), named after its origin.
        return url.removeprefix("blob:").startswith(self.origin + "/")

    def _route(self, route) -> None:
        if self.ours(route.request.url):
            route.continue_()
        else:
            self.blocked.append(route.request.url)
            route.abort("internetdisconnected")

    def drop(self, *files: dict[str, str]) -> None:
        transfer = self.page.evaluate_handle(DATA_TRANSFER, list(files))
        self.page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})

    def screenshot(self, name: str, tmp_path: Path) -> None:
        folder = os.environ.get("LATENTQ_CONSOLE_SCREENSHOTS")
        target = (REPO / folder if folder else tmp_path) / f"console-{name}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(target))

    def close(self) -> None:
        self.context.close()


def _encode_photo(origin: str, name: str) -> bytes:
    """A real latent of a photograph (so the gallery shows pictures): the API's encode route, as safetensors."""
    reply = httpx.post(f"{origin}/v1/models/taef2/encode", content=_png(name, (192, 192)),
                       headers={"content-type": "image/png"}, timeout=120)  # fmt: skip
    assert reply.status_code == 200, reply.text
    shape = json.loads(reply.headers["shape"])
    return safetensors_bytes({"latent": torch.frombuffer(bytearray(reply.content), dtype=torch.float32).reshape(shape)})


# ------------------------------------------------------------------------------------------ GET /v1/jobs
@pytest.mark.timeout(60)
def test_recent_index_pages_newest_first_through_ties_and_keeps_its_bound(redis_conn, monkeypatch):
    from latentq.state import recent

    monkeypatch.setattr(recent, "RECENT_JOBS_LIMIT", 6)
    submitted = [("a1", 100.0), ("a2", 100.0), ("a3", 100.0), ("b", 101.5), ("c1", 102.0), ("c2", 102.0),
                 ("c3", 102.0), ("c4", 102.0)]  # two submit_many batches (one submit time each) and one job
    with redis_conn.pipeline() as pipe:
        for job_id, at in submitted:
            recent.index_recent_job(pipe, "alice", job_id, at)
        pipe.execute()
    everything = recent.recent_job_ids(redis_conn, "alice", 100)
    assert [job_id for _, job_id in everything] == ["c4", "c3", "c2", "c1", "b", "a3"]  # the 2 oldest trimmed
    for size in (1, 2, 4):  # a cursor may fall inside a batch: the page after it goes on from there
        walked, cursor = [], None
        while page := recent.recent_job_ids(redis_conn, "alice", size, cursor):
            walked += page
            cursor = page[-1]
        assert walked == everything, size
    assert recent.recent_job_ids(redis_conn, "bob", 10) == []


@pytest.mark.timeout(180)
def test_job_listing_pages_filters_and_reports_timings_over_http(deployment):
    """On the console's deployment: sd15 has no worker there (its jobs wait), taef2 has one."""
    up, redis_url = deployment
    waiting = safetensors_bytes({"latent": torch.randn(4, 8, 8)})
    ids = [httpx.post(f"{up}/v1/jobs?model=sd15", content=waiting, timeout=30).json()["id"] for _ in range(4)]
    overview = httpx.get(f"{up}/v1/overview", timeout=30).json()
    (sd15,) = [model for model in overview["models"] if model["name"] == "sd15"]
    assert (sd15["queued"], sd15["workers"]) == (4, 0) and "no live worker" in sd15["waiting_reason"], sd15
    assert httpx.delete(f"{up}/v1/jobs/{ids[0]}", timeout=30).json()["status"] == "canceled"

    def listing(**params):
        reply = httpx.get(f"{up}/v1/jobs", params=params, timeout=30)
        assert reply.status_code == 200, reply.text
        return reply.json()

    first = listing(model="sd15", limit=3)
    assert [job["id"] for job in first["jobs"]] == ids[:0:-1] and first["next_cursor"]
    assert all(job["status_url"].endswith(f"/v1/jobs/{job['id']}") for job in first["jobs"])
    second = listing(model="sd15", limit=3, cursor=first["next_cursor"])
    assert [job["id"] for job in second["jobs"]] == ids[:1] and second["next_cursor"] is None
    assert [job["id"] for job in listing(model="sd15", status="canceled")["jobs"]] == ids[:1]
    assert [job["id"] for job in listing(model="sd15", status="queued")["jobs"]] == ids[:0:-1]
    connection = Redis.from_url(redis_url)
    connection.zadd(recent_jobs_key("default"), {"gone-long-ago": 1.0})  # its record expired: it is forgotten
    unfiltered = [job["id"] for job in listing(limit=100)["jobs"]]
    assert unfiltered[:4] == ids[::-1] and "gone-long-ago" not in unfiltered, "newest first, whatever the model"
    assert connection.zscore(recent_jobs_key("default"), "gone-long-ago") is None
    connection.close()
    for params, field, code in [({"status": "lost"}, "status", 422), ({"cursor": "x"}, "cursor", 422),
                                ({"limit": 0}, "limit", 422), ({"model": "nope"}, None, 404)]:  # fmt: skip
        reply = httpx.get(f"{up}/v1/jobs", params=params, timeout=30)
        assert reply.status_code == code, (params, reply.text)
        if field:
            assert reply.json()["error"]["field"] == field, reply.text

    # Finished jobs: Redis drops their records at once here (LATENTQ_RECORD_TTL=0), the store's answer.
    decoded = safetensors_bytes({"latent": torch.randn(32, 4, 4)})
    done = [httpx.post(f"{up}/v1/jobs?model=taef2", content=decoded, timeout=30).json()["id"] for _ in range(2)]
    for job_id in done:
        job = httpx.get(f"{up}/v1/jobs/{job_id}", params={"wait": 120}, timeout=150).json()
        assert job["status"] == "finished", job
        assert set(job["timings"]) == {"waiting", "decode", "encode", "store"}, job
        assert all(value >= 0 for value in job["timings"].values()) and job["timings"]["decode"] > 0, job
    finished = listing(model="taef2", status="finished", limit=2)["jobs"]
    assert [job["id"] for job in finished] == done[::-1]
    assert all(job["results"][0]["url"] and job["timings"]["store"] >= 0 for job in finished)


# ------------------------------------------------------------------------------------------ the console
@browser_test
@pytest.mark.timeout(240)
def test_console_submits_shows_round_trips_and_stays_offline(up, chromium, tmp_path):
    with ThreadPoolExecutor(len(PHOTOS)) as pool:  # encoded together: one batch
        encoded = list(pool.map(lambda name: _encode_photo(up, name), PHOTOS))
    latents = [_as_file(f"{name}.safetensors", data, "application/octet-stream") for name, data in zip(PHOTOS, encoded)]
    browser = Offline(chromium, up)
    page = browser.page
    try:
        page.goto(up + "/")
        page.wait_for_selector("#submit-model option[value=taef2]", state="attached")
        page.wait_for_selector("#worker-rows tr[data-worker]")  # the live worker, from /v1/overview

        # Three latents dropped on the drop zone: three decoded thumbnails in the gallery.
        browser.drop(*latents)
        page.wait_for_function("document.querySelectorAll('#submit-log a').length === 3")
        ids = page.eval_on_selector_all("#submit-log a", "links => links.map(a => a.hash.split('/').pop())")
        assert len(set(ids)) == 3
        for job_id in ids:
            page.wait_for_function(THUMBNAIL_LOADED, arg=job_id)
        src = page.get_attribute(f'.card[data-job-id="{ids[0]}"] img', "src")
        assert src.startswith(up + "/v1/results/") and ".png" in src
        page.wait_for_function("document.querySelector('#queue-rows tr[data-model=taef2] svg rect[opacity=\"1\"]') !== null")
        # The worker's own counters: each model it serves loaded once at its start, never evicted.
        (worker,) = httpx.get(f"{up}/v1/overview", timeout=30).json()["workers"]
        page.wait_for_function("expected => document.querySelector('#worker-rows tr[data-worker] td.model-switches')"
                               "?.textContent === expected", arg=f"{len(worker['models'])} / 0")  # fmt: skip
        assert page.text_content("#worker-rows tr[data-worker] td.encode-wait") == "0.0 s"

        # A video: its card shows the first frame (a poster), and plays under the pointer.
        clip = safetensors_bytes({"latent": torch.randn(1, 16, 3, 6, 8)})  # 9 frames of 48x64
        video_id = httpx.post(f"{up}/v1/jobs?model=wan&output_format=mp4", content=clip, timeout=30).json()["id"]
        page.wait_for_function(VIDEO_FRAME_SHOWN, arg=video_id)
        page.hover(f'.card[data-job-id="{video_id}"] video')
        page.wait_for_function("(id) => !document.querySelector(`.card[data-job-id=\"${id}\"] video`).paused", arg=video_id)
        page.mouse.move(0, 0)
        page.evaluate("window.scrollTo(0, 0)")
        browser.screenshot("dashboard", tmp_path)

        # The filter: finished jobs only (the encode jobs above are finished too).
        page.select_option("#filter-status", "finished")
        page.wait_for_function("""() => {
          const cards = [...document.querySelectorAll('#gallery .card')];
          return cards.length >= 3 && cards.every((card) => card.dataset.status === 'finished');
        }""")
        page.select_option("#filter-status", "failed")
        page.wait_for_function("document.querySelectorAll('#gallery .card').length === 0")
        page.select_option("#filter-status", "")

        # A dropped image: encoded, then decoded, shown side by side.
        browser.drop(_as_file("chelsea.png", _png("chelsea", (256, 192)), "image/png"))
        page.wait_for_selector("#roundtrips .pair[data-job-id]", timeout=120_000)
        page.wait_for_function("document.querySelector('.roundtrip-decoded').complete")
        compared = page.evaluate(ROUND_TRIP_DIFFERENCE)
        assert compared["widths"] == [256, 256], compared
        assert compared["difference"] < 20, compared  # the same photograph (a random decode differs by ~70)
        page.locator("#roundtrips").scroll_into_view_if_needed()
        browser.screenshot("round-trip", tmp_path)

        # A job's page: where its time went, stage by stage, and its result links.
        page.click(f'.card[data-job-id="{ids[0]}"]')
        page.wait_for_selector("#timings tr[data-stage]")
        stages = page.eval_on_selector_all("#timings tr[data-stage]",
                                           "rows => rows.map(r => [r.dataset.stage, Number(r.querySelector('[data-ms]').dataset.ms)])")  # fmt: skip
        assert [stage for stage, _ in stages] == ["waiting", "decode", "encode", "store"], stages
        assert all(ms >= 0 for _, ms in stages) and dict(stages)["decode"] > 0, stages
        assert page.locator("#end-to-end").count() == 1  # submitted to stored: the stages and the hand-offs
        link = page.get_attribute("#result-links a", "href")
        assert httpx.get(link, timeout=30).headers["content-type"] == "image/png"
        browser.screenshot("job", tmp_path)

        # The API docs render from latentq's own files, with everything else unreachable.
        page.goto(up + "/docs")
        page.locator(".swagger-ui .opblock-summary-path", has_text="/v1/overview").wait_for()
        assert page.locator(".swagger-ui .opblock").count() >= 10
        page.locator(".opblock-get .opblock-summary", has_text="/v1/overview").click()  # and "Try it out" works
        page.locator(".opblock-get.is-open .try-out__btn").click()
        page.locator(".opblock-get.is-open .execute").click()
        page.locator(".opblock-get.is-open .live-responses-table .response-col_status", has_text="200").wait_for()

        assert browser.blocked == [], browser.blocked  # nothing even tried to leave
        assert [url for url in browser.requested if not browser.ours(url)] == []
        assert browser.errors == [], browser.errors
    finally:
        browser.close()



@browser_test
@pytest.mark.timeout(150)
def test_console_asks_for_a_key_and_shows_that_tenants_jobs_only(deployment, chromium):
    from latentq.state.tenants import TenantDirectory

    up, redis_url = deployment
    connection = Redis.from_url(redis_url)
    tenants = TenantDirectory(connection)
    keys = {name: tenants.create_key(name) for name in ("alice", "bob")}  # API keys on, from the next request
    try:
        waiting = safetensors_bytes({"latent": torch.randn(4, 8, 8)})  # sd15: no worker, so it stays queued
        mine, theirs = (httpx.post(f"{up}/v1/jobs?model=sd15", content=waiting, timeout=30,
                                   headers={"authorization": f"Bearer {keys[who]}"}).json()["id"] for who in keys)  # fmt: skip
        browser = Offline(chromium, up)
        page = browser.page
        try:
            page.goto(up + "/")
            page.wait_for_selector("#key-dialog[open]")  # the API answered 401: the page asks
            page.fill("#key-input", "not-a-key")
            page.click("#key-form button[type=submit]")
            page.wait_for_function("document.querySelector('#key-error').textContent.includes('refused')")
            assert page.is_visible("#key-dialog[open]")
            page.fill("#key-input", keys["alice"])
            page.click("#key-form button[type=submit]")
            page.wait_for_selector(f'.card[data-job-id="{mine}"][data-status="queued"]')
            page.wait_for_selector("#queue-rows tr[data-model=sd15] .waiting-reason")  # no live worker serves it
            assert page.locator("#gallery .card").count() == 1, "bob's jobs (and those before keys) are not alice's"
            assert page.locator(f'.card[data-job-id="{theirs}"]').count() == 0
            assert page.evaluate("sessionStorage.getItem('latentq.apiKey')") == keys["alice"]
            assert browser.blocked == [] and browser.errors == [], (browser.blocked, browser.errors)
        finally:
            browser.close()
    finally:
        for name in keys:  # no key left anywhere: authentication is off again for the deployment's other tests
            tenants.revoke(name)
        connection.close()
