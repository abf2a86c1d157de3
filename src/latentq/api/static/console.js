// latentq console: plain JS over the JSON API (no framework, no build step, nothing loaded from elsewhere).
"use strict";

const KEY_STORAGE = "latentq.apiKey";
const REFRESH_MS = 2000;
const PAGE_SIZE = 24;
const RATE_WINDOW_S = 30; // batches per second: over the samples of the last half minute
const MAX_SIDE = 1024; // a dropped image is scaled to at most this many pixels a side before encoding
const SAFETENSORS_DTYPES = { float32: "F32", float16: "F16", bfloat16: "BF16" };
const STAGES = ["waiting", "decode", "encode", "store"];

const $ = (selector, root = document) => root.querySelector(selector);
const state = { models: {}, cards: new Map(), samples: {}, olderCursor: null, older: [], blobUrls: new Map(), timer: null };

// ---------------------------------------------------------------- small DOM helper
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const svgNS = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}) {
  const node = document.createElementNS(svgNS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  return node;
}

// ---------------------------------------------------------------- the API, with the key when there is one
class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || `HTTP ${status}`);
    this.status = status;
  }
}

let keyPrompt = null;
function askForKey(message) {
  // One dialog however many calls were refused at once; each retries with the key given.
  if (!keyPrompt) {
    keyPrompt = new Promise((resolve) => {
      const dialog = $("#key-dialog");
      $("#key-error").textContent = message || "";
      $("#key-form").onsubmit = () => {
        sessionStorage.setItem(KEY_STORAGE, $("#key-input").value.trim());
        $("#key-input").value = "";
        $("#key-button").hidden = false;
        keyPrompt = null;
        resolve();
      };
      dialog.showModal();
    });
  }
  return keyPrompt;
}

function authHeaders(extra = {}) {
  const key = sessionStorage.getItem(KEY_STORAGE);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : { ...extra };
}

async function api(path, options = {}) {
  for (;;) {
    const response = await fetch(path, { ...options, headers: authHeaders(options.headers) });
    if (response.status !== 401) return response;
    const had = sessionStorage.getItem(KEY_STORAGE);
    sessionStorage.removeItem(KEY_STORAGE);
    await askForKey(had ? "That key was refused; try another." : "");
  }
}

async function getJson(path, options) {
  const response = await api(path, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

// Result objects need the key too when keys are on: an <img> cannot send a header, so fetch them as blobs.
async function mediaUrl(url) {
  if (!sessionStorage.getItem(KEY_STORAGE) || !url.startsWith(location.origin)) return url;
  if (!state.blobUrls.has(url)) {
    state.blobUrls.set(url, api(url).then(async (r) => URL.createObjectURL(await r.blob())));
  }
  return state.blobUrls.get(url);
}

function media(url, contentType, { poster = null, alt = "" } = {}) {
  const isVideo = contentType && contentType.startsWith("video/");
  const node = isVideo
    ? el("video", { muted: true, loop: true, playsinline: true, preload: "metadata" })
    : el("img", { alt, decoding: "async" });
  if (isVideo) {
    node.muted = true;
    node.addEventListener("mouseenter", () => node.play().catch(() => {}));
    node.addEventListener("mouseleave", () => node.pause());
    if (poster) mediaUrl(poster).then((src) => { node.poster = src; });
  }
  mediaUrl(url).then((src) => { node.src = src; });
  return node;
}

// ---------------------------------------------------------------- formatting
const fmtMs = (ms) => (ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(1)} ms`);
const fmtBytes = (n) => (n >= 1 << 30 ? `${(n / (1 << 30)).toFixed(1)} GiB` : n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MiB`
  : n >= 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${n} B`);
const fmtTime = (iso) => (iso ? new Date(iso).toLocaleTimeString([], { hour12: false }) : "—");
const badge = (status) => el("span", { class: `badge ${status}`, text: status });

// ---------------------------------------------------------------- queues and workers
function sparkline(values) {
  const width = 150, height = 28, gap = 1;
  const max = Math.max(1, ...values);
  const bar = width / values.length;
  const chart = svg("svg", { width, height, class: "spark", viewBox: `0 0 ${width} ${height}`, role: "img" });
  const title = svg("title");
  title.textContent = `finished per minute, oldest first: ${values.join(", ")}`;
  chart.append(title);
  values.forEach((value, i) => {
    const h = value ? Math.max(2, (value / max) * (height - 2)) : 1;
    chart.append(svg("rect", { x: i * bar, y: height - h, width: bar - gap, height: h, opacity: value ? 1 : 0.25 }));
  });
  return chart;
}

function batchesPerSecond(worker, now) {
  const samples = (state.samples[worker.name] ||= []);
  samples.push([now, worker.decode_calls]);
  while (samples.length > 2 && now - samples[0][0] > RATE_WINDOW_S) samples.shift();
  if (samples.length < 2) return "—";
  const [t0, c0] = samples[0];
  return ((worker.decode_calls - c0) / Math.max(now - t0, 1e-3)).toFixed(2);
}

function renderOverview(overview) {
  $("#chart-minutes").textContent = overview.chart_minutes;
  const queueRows = overview.models.map((m) => el("tr", { "data-model": m.name },
    el("td", {}, el("strong", { text: m.name }),
      m.waiting_reason ? el("div", { class: "waiting-reason", text: `jobs wait: ${m.waiting_reason}` }) : null),
    el("td", { class: "num", text: m.queued }),
    el("td", { class: "num", text: m.started }),
    el("td", { class: "num", text: m.workers }),
    el("td", { class: "num", text: `${m.totals.finished} / ${m.totals.failed}` }),
    el("td", {}, sparkline(m.finished_per_minute))));
  $("#queue-rows").replaceChildren(...(queueRows.length ? queueRows
    : [el("tr", {}, el("td", { colspan: 6, class: "muted", text: "no queue has jobs or workers yet" }))]));
  const workerRows = overview.workers.map((w) => el("tr", { "data-worker": w.name },
    el("td", { class: "mono", text: w.name }),
    el("td", { text: w.host || "—" }),
    el("td", { text: w.device }),
    el("td", { text: w.models.join(", ") }),
    el("td", { text: w.state }),
    el("td", { class: "num", text: batchesPerSecond(w, overview.time) }),
    el("td", { class: "num", text: `${w.finished} / ${w.failed}` }),
    el("td", { text: w.gpu_memory_total ? `${fmtBytes(w.gpu_memory_used)} of ${fmtBytes(w.gpu_memory_total)}` : "—" }),
    el("td", { class: "num model-switches", text: `${w.model_loads} / ${w.model_evictions}`,
      title: w.compile_eager_calls ? `${w.compile_eager_calls} decoder calls ran eager (--compile)` : "" }),
    el("td", { class: "num encode-wait", text: `${(w.encode_wait_ms / 1000).toFixed(1)} s`,
      title: "time the decode loop waited for a free encoder (rising: raise --encode-threads)" })));
  $("#worker-rows").replaceChildren(...(workerRows.length ? workerRows
    : [el("tr", {}, el("td", { colspan: 10, class: "muted", text: "no live worker" }))]));
}

// ---------------------------------------------------------------- the gallery
function thumbnail(job) {
  const result = job.results && job.results[0];
  const preview = job.preview;
  if (job.status === "finished" && result) {
    if (/^(image|video)\//.test(result.content_type)) {
      return media(result.url, result.content_type, { poster: preview && preview.url, alt: `job ${job.id}` });
    }
    const latent = /safetensors|octet-stream|tensor/.test(result.content_type);
    return el("div", { class: "placeholder", text: latent ? "encoded latent" : result.content_type });
  }
  if (preview) return media(preview.url, preview.content_type, { alt: `preview of job ${job.id}` });
  return el("div", { class: "placeholder", text: job.status });
}

function card(job) {
  const result = job.results && job.results[0];
  const signature = [job.status, job.preview && job.preview.key, result && result.key].join("|");
  const existing = state.cards.get(job.id);
  if (existing && existing.dataset.signature === signature) return existing;
  const node = el("a", { class: "card", href: `#/jobs/${job.id}`, "data-job-id": job.id, "data-status": job.status, "data-signature": signature },
    el("div", { class: "thumb" }, thumbnail(job)),
    el("div", { class: "meta" }, badge(job.status), el("span", { class: "muted", text: job.model }),
      el("span", { class: "muted", text: fmtTime(job.enqueued_at) })));
  state.cards.set(job.id, node);
  return node;
}

function filters() {
  const params = new URLSearchParams({ limit: PAGE_SIZE });
  if ($("#filter-model").value) params.set("model", $("#filter-model").value);
  if ($("#filter-status").value) params.set("status", $("#filter-status").value);
  return params;
}

async function refreshGallery() {
  const page = await getJson(`/v1/jobs?${filters()}`);
  const seen = new Set(page.jobs.map((job) => job.id));
  const older = state.older.filter((job) => !seen.has(job.id));
  const jobs = [...page.jobs, ...older];
  if (!state.older.length) state.olderCursor = page.next_cursor;
  $("#more").hidden = !state.olderCursor;
  placeChildren($("#gallery"), jobs.length ? jobs.map(card) : [el("p", { class: "muted", text: "no jobs yet: drop a latent above" })]);
}

// Puts ``nodes`` in ``parent`` in order, touching only what moved: a node taken out of the page and put
// back would reload its image, and a playing video would stop.
function placeChildren(parent, nodes) {
  nodes.forEach((node, index) => {
    if (parent.children[index] !== node) parent.insertBefore(node, parent.children[index] || null);
  });
  while (parent.children.length > nodes.length) parent.lastElementChild.remove();
}

async function loadOlder() {
  const params = filters();
  params.set("cursor", state.olderCursor);
  const page = await getJson(`/v1/jobs?${params}`);
  state.older.push(...page.jobs);
  state.olderCursor = page.next_cursor;
  await refreshGallery();
}

function resetGallery() {
  state.older = [];
  state.olderCursor = null;
  refreshGallery().catch(showError);
}

// ---------------------------------------------------------------- a job's page
function timingSection(job) {
  const timings = job.timings;
  if (!timings) return el("p", { class: "muted", text: "The time by stage shows once the job has finished." });
  const total = STAGES.reduce((sum, stage) => sum + (timings[stage] || 0), 0) || 1;
  const bar = el("div", { class: "timeline", id: "timeline" }, STAGES.filter((s) => timings[s] !== undefined).map((stage) =>
    el("span", { class: `stage-${stage}`, style: `width:${(100 * timings[stage]) / total}%`, title: `${stage}: ${fmtMs(timings[stage])}` })));
  const rows = STAGES.filter((s) => timings[s] !== undefined).map((stage) => el("tr", { "data-stage": stage },
    el("td", {}, el("span", { class: `swatch stage-${stage}` }), stage === "decode" && job.batch_size > 1 ? `decode (batch of ${job.batch_size})` : stage),
    el("td", { class: "num", "data-ms": timings[stage], text: fmtMs(timings[stage]) }),
    el("td", { class: "num muted", text: `${Math.round((100 * timings[stage]) / total)} %` })));
  return el("div", {}, bar, el("table", { id: "timings" },
    el("thead", {}, el("tr", {}, el("th", { text: "stage" }), el("th", { class: "num", text: "time" }), el("th", { class: "num", text: "share" }))),
    el("tbody", {}, rows),
    el("tfoot", {}, el("tr", {}, el("th", { text: "these stages" }), el("th", { class: "num", text: fmtMs(total) }), el("th", {})),
      endToEnd(job))));
}

function endToEnd(job) {
  // Submitted to stored: the stages plus the hand-offs between them (batching, the encode pool, the commit).
  if (!job.enqueued_at || !job.ended_at) return null;
  const ms = new Date(job.ended_at) - new Date(job.enqueued_at);
  return el("tr", { id: "end-to-end" }, el("th", { text: "submitted to stored" }), el("th", { class: "num", text: fmtMs(ms) }), el("th", {}));
}

function renderJob(job) {
  const result = job.results && job.results[0];
  const shown = result && /^(image|video)\//.test(result.content_type) ? result : job.preview;
  const facts = [["model", job.model], ["status", badge(job.status)], ["submitted", fmtTime(job.enqueued_at)],
    ["started", fmtTime(job.started_at)], ["ended", fmtTime(job.ended_at)], ["worker", job.worker],
    ["queue position", job.queue_position], ["waiting", job.waiting_reason], ["batch size", job.batch_size],
    ["tiled", job.tiled], ["batch", job.batch_id], ["error", job.error && el("span", { class: "error", text: job.error })]]
    .filter(([, value]) => value !== null && value !== undefined && value !== "");
  const links = (job.results || []).map((item) => el("li", {},
    el("a", { href: item.url, target: "_blank", rel: "noopener", text: item.key.split("/").pop() }),
    el("span", { class: "muted", text: ` ${item.content_type}${item.width ? `, ${item.width}×${item.height}` : ""}${item.bytes ? `, ${fmtBytes(item.bytes)}` : ""}` })));
  $("#job").replaceChildren(
    el("h2", {}, "Job ", el("code", { text: job.id }), " ", badge(job.status)),
    el("div", { class: "job-grid" },
      el("div", {}, shown ? media(shown.url, shown.content_type, { alt: `job ${job.id}` }) : el("p", { class: "muted", text: "no image yet" }),
        shown === job.preview && shown ? el("p", { class: "muted", text: "preview (tiny autoencoder)" }) : null),
      el("div", {},
        el("dl", { class: "facts" }, facts.flatMap(([name, value]) => [el("dt", { text: name }), el("dd", {}, value)])),
        el("h3", { text: "Where the time went" }), timingSection(job),
        el("h3", { text: "Results" }),
        links.length ? el("ul", { id: "result-links" }, links) : el("p", { class: "muted", text: "none yet" }),
        el("p", {}, el("a", { href: job.status_url, target: "_blank", rel: "noopener", text: "status JSON" })))));
}

async function showJob(id) {
  $("#job").replaceChildren(el("p", { class: "muted", text: "loading…" }));
  let job = await getJson(`/v1/jobs/${encodeURIComponent(id)}`);
  renderJob(job);
  // Until it ends: the API's long-poll answers as soon as it does.
  while (!["finished", "failed", "canceled", "expired"].includes(job.status) && location.hash === `#/jobs/${id}`) {
    job = await getJson(`/v1/jobs/${encodeURIComponent(id)}?wait=20`);
    if (location.hash === `#/jobs/${id}`) renderJob(job);
  }
}

// ---------------------------------------------------------------- submit: drop a latent, or an image to round-trip
function log(...parts) {
  const line = el("div", {}, ...parts);
  $("#submit-log").prepend(line);
  return line;
}

async function waitForJob(id) {
  for (;;) {
    const job = await getJson(`/v1/jobs/${encodeURIComponent(id)}?wait=30`);
    if (["finished", "failed", "canceled", "expired"].includes(job.status)) return job;
  }
}

async function submitLatent(body, name, model, format) {
  const params = new URLSearchParams({ model, output_format: format });
  const response = await getJson(`/v1/jobs?${params}`, { method: "POST", body, headers: { "Content-Type": "application/octet-stream" } });
  log(`${name} → `, el("a", { href: `#/jobs/${response.id}`, text: response.id.slice(0, 12) }), ` queued for ${model}`);
  return response;
}

function safetensors(data, shape, dtype) {
  const code = SAFETENSORS_DTYPES[dtype];
  if (!code) throw new Error(`the encoder answered dtype ${dtype}, which this page cannot wrap`);
  let header = JSON.stringify({ latent: { dtype: code, shape, data_offsets: [0, data.byteLength] } });
  while ((8 + header.length) % 8) header += " "; // safetensors aligns the data to 8 bytes
  const head = new TextEncoder().encode(header);
  const out = new Uint8Array(8 + head.length + data.byteLength);
  new DataView(out.buffer).setBigUint64(0, BigInt(head.length), true);
  out.set(head, 8);
  out.set(new Uint8Array(data), 8 + head.length);
  return new Blob([out], { type: "application/octet-stream" });
}

async function fitImage(file, factor) {
  // The encoder takes sides that are multiples of the model's spatial factor: scale, then crop to them.
  const bitmap = await createImageBitmap(file);
  const scale = Math.min(1, MAX_SIDE / Math.max(bitmap.width, bitmap.height));
  const width = Math.max(factor, Math.floor((bitmap.width * scale) / factor) * factor);
  const height = Math.max(factor, Math.floor((bitmap.height * scale) / factor) * factor);
  const canvas = el("canvas", { width, height });
  canvas.getContext("2d").drawImage(bitmap, 0, 0, width, height);
  return new Promise((resolve) => canvas.toBlob((blob) => resolve({ blob, width, height }), "image/png"));
}

async function roundTrip(file, model) {
  const spec = state.models[model];
  if (!spec || !spec.has_encoder) {
    const withEncoder = Object.values(state.models).filter((m) => m.has_encoder).map((m) => m.name);
    log(el("span", { class: "error", text: `${file.name}: model ${model} has no encoder; pick one that has (${withEncoder.join(", ") || "none here"})` }));
    return;
  }
  const { blob, width, height } = await fitImage(file, spec.spatial_factor || 8);
  const decoded = el("img", { alt: `${file.name} after the round trip`, class: "roundtrip-decoded" });
  const caption = el("figcaption", { text: "encoding…" });
  const entry = el("div", { class: "pair", "data-file": file.name },
    el("figure", {}, el("img", { src: URL.createObjectURL(blob), alt: file.name, class: "roundtrip-original" }),
      el("figcaption", { text: `${file.name}, ${width}×${height} (sent)` })),
    el("figure", {}, decoded, caption));
  $("#roundtrips").hidden = false;
  $("#roundtrip-list").prepend(entry);
  try {
    const params = new URLSearchParams();
    // The latent in the model's own scaling: what POST /v1/jobs decodes by default.
    if (spec.scaling_factor !== null) params.set("scaling_factor", spec.scaling_factor);
    if (spec.shift_factor !== null) params.set("shift_factor", spec.shift_factor);
    const response = await api(`/v1/models/${encodeURIComponent(model)}/encode?${params}`, { method: "POST", body: blob, headers: { "Content-Type": "image/png" } });
    if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => ({})));
    const shape = JSON.parse(response.headers.get("shape"));
    const latent = safetensors(await response.arrayBuffer(), shape, response.headers.get("dtype"));
    caption.textContent = `encoded to a ${shape.join("×")} latent; decoding…`;
    const submitted = await submitLatent(latent, file.name, model, "png");
    const job = await waitForJob(submitted.id);
    if (job.status !== "finished") throw new Error(`the decode ${job.status}: ${job.error || ""}`);
    decoded.src = await mediaUrl(job.results[0].url);
    caption.replaceChildren(`decoded from a ${shape.join("×")} latent (`, el("a", { href: `#/jobs/${job.id}`, text: "job" }), ")");
    entry.dataset.jobId = job.id;
  } catch (error) {
    caption.replaceChildren(el("span", { class: "error", text: `${file.name}: ${error.message}` }));
  }
}

async function submitFiles(files) {
  const model = $("#submit-model").value;
  const format = $("#submit-format").value;
  for (const file of files) {
    try {
      if (file.name.endsWith(".safetensors")) await submitLatent(file, file.name, model, format);
      else if (/^image\/(png|jpeg|webp)$/.test(file.type)) roundTrip(file, model); // runs on; the next file goes in now
      else log(el("span", { class: "error", text: `${file.name}: drop a .safetensors latent or a PNG, JPEG or WebP image` }));
    } catch (error) {
      log(el("span", { class: "error", text: `${file.name}: ${error.message}` }));
    }
  }
  refreshGallery().catch(showError);
}

// ---------------------------------------------------------------- wiring
function showError(error) {
  $("#live").textContent = `not updated: ${error.message}`;
}

async function refreshDashboard() {
  clearTimeout(state.timer);
  if (location.hash.startsWith("#/jobs/")) return;
  try {
    const [overview] = await Promise.all([getJson("/v1/overview"), refreshGallery()]);
    renderOverview(overview);
    $("#live").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    showError(error);
  }
  state.timer = setTimeout(refreshDashboard, REFRESH_MS);
}

async function loadModels() {
  const { models } = await getJson("/v1/models");
  const current = $("#submit-model").value;
  state.models = Object.fromEntries(models.map((m) => [m.name, m]));
  // Served models first: a model without a worker would only queue.
  const names = models.map((m) => m.name).sort((a, b) => (state.models[b].workers > 0) - (state.models[a].workers > 0) || a.localeCompare(b));
  $("#submit-model").replaceChildren(...names.map((name) => el("option", { value: name, text: state.models[name].workers > 0 ? name : `${name} (no worker)` })));
  $("#submit-model").value = current || names[0];
  $("#filter-model").replaceChildren(el("option", { value: "", text: "all" }), ...names.slice().sort().map((name) => el("option", { text: name })));
}

function route() {
  const match = location.hash.match(/^#\/jobs\/([A-Za-z0-9_-]+)$/);
  $("#view-job").hidden = !match;
  $("#view-dashboard").hidden = Boolean(match);
  if (match) showJob(match[1]).catch((error) => $("#job").replaceChildren(el("p", { class: "error", text: error.message })));
  else refreshDashboard();
}

function setUpDropZone() {
  const zone = $("#drop-zone");
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (event) => { event.preventDefault(); zone.classList.add("over"); });
  }
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    submitFiles([...event.dataTransfer.files]);
  });
  $("#file-input").addEventListener("change", (event) => {
    submitFiles([...event.target.files]);
    event.target.value = "";
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setUpDropZone();
  $("#more").addEventListener("click", () => loadOlder().catch(showError));
  $("#filter-model").addEventListener("change", resetGallery);
  $("#filter-status").addEventListener("change", resetGallery);
  $("#key-button").hidden = !sessionStorage.getItem(KEY_STORAGE);
  $("#key-button").addEventListener("click", () => { sessionStorage.removeItem(KEY_STORAGE); askForKey("").then(route); });
  window.addEventListener("hashchange", route);
  loadModels().catch(showError).finally(route);
});
