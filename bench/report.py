"""bench_cpu.py's outputs, all made from one dict of results: markdown, JSON, and a PNG plot.

The dict (``data``) has ``meta`` (machine, command, settings), ``throughput`` (rows a, p, b, a2, t, b1,
c, c1 and the per-decode times), ``dispatch`` (row d), ``light_load`` (row e), ``memory`` (row f),
``load`` (cores other processes used during each row), ``retried`` and ``errors``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from common import fmt, markdown_table, mib, ratio, verdict

THROUGHPUT_ROWS = ("a", "p", "b", "a2", "t", "b1", "c", "c1")
# the plot's systems: (label, rows whose images/s are averaged, colour)
PLOT_SYSTEMS = (
    ("in-process\nloop\n(mean of a, a2)", ("a", "a2"), "#7f7f7f"),
    ("in-process\nloop, tuned\n(t)", ("t",), "#bdbdbd"),
    ("plain RQ\n1 job/latent\n(p)", ("p",), "#ff7f0e"),
    ("latentq\n1 worker\nbatch 1 (b1)", ("b1",), "#9ecae1"),
    ("latentq\n1 worker\nbatch {mb} (b)", ("b",), "#3182bd"),
    ("latentq\n2 workers\nbatch 1 (c1)", ("c1",), "#a1d99b"),
    ("latentq\n2 workers\nbatch {mb} (c)", ("c",), "#31a354"),
)
DISTURBED_CORES = 0.10


def row_label(row: str, max_batch: int) -> str:
    return {
        "a": "in-process loop (load once; decode + to_uint8 + PNG + write, sequential)",
        "p": "plain RQ: 1 job per latent, SimpleWorker, model in a module global, job writes the PNG",
        "b": f"latentq, 1 worker (max-batch {max_batch})",
        "a2": "in-process loop again, right after p and b (drift check)",
        "t": "in-process loop tuned as the worker loads the model (channels_last)",
        "b1": "latentq, 1 worker (max-batch 1)",
        "c": f"latentq, 2 workers (max-batch {max_batch})",
        "c1": "latentq, 2 workers (max-batch 1)",
    }[row]


def baselines(data: dict) -> tuple[float, float]:
    """(mean of a and a2, a alone) images/s."""
    rows = data["throughput"]["rows"]
    bracket = [rows[r]["images_per_s"] for r in ("a", "a2") if r in rows]
    return sum(bracket) / len(bracket), rows["a"]["images_per_s"]


def load_note(data: dict, row: str) -> str:
    cores = data["load"].get(row, 0.0)
    return f"other procs {cores:.2f} cores" if cores >= 0.05 else ""


def join_notes(*notes: str) -> str:
    return ", ".join(n for n in notes if n)


# --------------------------------------------------------------------------------------------- markdown
def throughput_markdown(data: dict, missed: list[str]) -> str:
    meta, tput = data["meta"], data["throughput"]
    rows, mb, hw, ch = tput["rows"], meta["max_batch"], meta["latent_hw"], meta["channels"]
    base, a_rate = baselines(data)
    table = []
    for row in THROUGHPUT_ROWS:
        if row not in rows:
            continue
        r = rows[row]
        target, ok = "-", None
        if row == "a":
            target = "baseline"
        elif row == "b":
            ok = r["images_per_s"] >= 0.95 * base
            target = ">= 0.95x"
            if not ok:
                missed.append(f"b: {r['images_per_s'] / base:.2f}x of the in-process loop (mean of a and a2; "
                              f"{r['images_per_s'] / a_rate:.2f}x of a alone; target >= 0.95x)")  # fmt: skip
        split = f"{meta['cpus']} CPUs split: --torch-threads {max(1, meta['cpus'] // 2)} each"
        notes = split if row in ("c", "c1") else ""
        if row == "b" and "t" in rows:  # the queue's own cost, at the decode settings the worker uses
            notes = f"vs t {r['images_per_s'] / rows['t']['images_per_s']:.2f}x"
        if len(r.get("rounds", [])) > 1:
            notes = join_notes(notes, "rounds " + " / ".join(f"{v:.1f}" for v in r["rounds"]))
        if r.get("clock_ok") is False:
            notes = join_notes(notes, f"**clock check failed** ({r['clock_early_ms']:.0f} / "
                                      f"{r['clock_late_ms']:.0f} ms)")  # fmt: skip
        table.append([row, row_label(row, mb), fmt(r["images_per_s"]), fmt(r["p50_ms"], 0), fmt(r["p99_ms"], 0),
                      ratio(r["images_per_s"], base), ratio(r["images_per_s"], a_rate), fmt(r["seconds"]),
                      fmt(r["mean_batch"], 1), target, verdict(ok) if ok is not None else "",
                      join_notes(notes, load_note(data, row))])  # fmt: skip
    return (
        f"### Throughput: {meta['images']} latents of 1x{ch}x{hw}x{hw} -> {hw * 8}x{hw * 8} PNG\n\n"
        f"One in-process decode of 1x{ch}x{hw}x{hw}: **{tput['single_decode_ms']:.1f} ms**; in a batch of "
        f"{mb}: {tput['batched_decode_ms']:.1f} ms per image. Model load in-process: {tput['model_load_ms']:.0f} "
        "ms. Queue rows: wall time from the first submit to the last job seen finished (20 ms polls of RQ's "
        "finished registry), workers already up and warmed with a few jobs of the same shape (the plain RQ "
        "worker's first warm-up job loads the model).\n\n"
        "Latency: all latents are submitted at once at t0; a latent's latency runs from its submit to its result "
        "being available: for the in-process loop from the loop's start to its file written, for queue rows RQ's "
        "`ended_at - enqueued_at` (both latentq and the plain-RQ job store the output before RQ marks the job "
        "finished; the timestamps come from the same machine's clock, checked against this process's).\n\n"
        f"Ratios are against the in-process loop measured in this run: the mean of a and a2 ({base:.2f} "
        "images/s; a and a2 bracket rows p and b, because the in-process rate itself drifts by 10-20% between "
        "runs on small VMs), and against a alone. The target is judged on the first. Rows a and a2 hold the "
        "model as a user's loop does (default memory layout); row t as the worker loads it on the CPU "
        "(channels_last), so b against t is the queue's own cost. The sequence a, p, b, a2, t, "
        f"b1, c, c1 ran {meta.get('rounds', 1)} time(s), interleaved; each row shows its median round (every "
        "round's images/s in its notes).\n\n"
        + markdown_table(["row", "setup", "images/s", "p50 ms", "p99 ms", "vs mean(a, a2)", "vs a", "seconds",
                          "mean batch", "target", "met", "notes"], table)
    )  # fmt: skip


def dispatch_markdown(data: dict, missed: list[str]) -> str:
    meta, d = data["meta"], data["dispatch"]
    ours, rq, d_ratio = d["latentq"], d["plain_rq"], d["ratio"]
    ok = d_ratio >= 5
    if not ok:
        missed.append(f"d: latentq/plain-RQ dispatch {d_ratio:.2f}x (target >= 5x)")

    def cells(r: dict) -> list[str]:
        return [fmt(r["jobs_per_s"], 1), fmt(r["queue_ms_per_job"]), fmt(r["queue_ms_per_job_after_first"]),
                fmt(r["decode_ms_per_job"]), fmt(r["seconds"]), fmt(r["mean_batch"], 1), fmt(r["first_job_ms"], 1),
                fmt(r["rest_jobs_per_s"], 1)]  # fmt: skip

    rows = [
        ["d", f"latentq, 1 worker (max-batch {meta['max_batch_tiny']}, max-wait {meta['max_wait_ms']:g} ms)",
         *cells(ours), f"{d_ratio:.2f}x", ">= 5x", verdict(ok), load_note(data, "d")],
        ["d", "plain RQ SimpleWorker running decode_job", *cells(rq), "1.00x", "baseline", "", ""],
    ]  # fmt: skip
    return (
        f"### Dispatch: {ours['jobs']} tiny jobs (1x{meta['channels']}x1x1 -> 8x8 {meta['tiny_format']})\n\n"
        f"In-process decode of one tiny latent: {d['tiny_single_ms']:.2f} ms; {d['tiny_batched_ms']:.2f} ms per "
        f"image in a batch of {str(meta['max_batch_tiny']).split(',')[0]}. All jobs are queued before the worker "
        "starts; jobs/s = jobs / (last job's ended_at - first job's started_at), nothing subtracted. queue "
        "ms/job = that span / jobs minus the mean decode time per job (the job results' decode_ms / "
        "batch_size: a latentq job reports its "
        "batch's decode), i.e. what the queue itself costs per job; \"after 1st\": the span after the first job "
        "ended / the other jobs, minus the mean decode of the jobs that started after it (no warm-up decode, no "
        "first batch). The "
        "stock RQ worker loads TAEF2 inside its first job (decode_job's lru_cache, once per process): that is in "
        "its first-job time, its rate and its whole-span queue cost; the latentq worker loads its model before "
        "it takes jobs. Both workers log at their default level (INFO) to a file.\n\n"
        + markdown_table(["row", "worker", "jobs/s", "queue ms/job", "queue ms/job after 1st", "decode ms/job",
                          "seconds", "mean batch", "first job ms", "jobs/s after 1st", "latentq / RQ", "target",
                          "met", "notes"], rows)
        + f"\n\nWall time from spawning the worker process to all jobs done: latentq "
        f"{ours['wall_incl_start_s']:.1f} s, stock RQ {rq['wall_incl_start_s']:.1f} s "
        "(both include Python + torch import; RQ's includes the model load)."
    )  # fmt: skip


def light_load_markdown(data: dict, missed: list[str]) -> str:
    meta, rows = data["meta"], []
    for r in data["light_load"]:
        wait_ms = r["max_wait_ms"]
        judged = r.get("queue_median", r["server_median"])
        ok = judged <= 2.0
        label = f"--max-wait-ms {wait_ms:g}" + (" (latentq's default)" if wait_ms == 5.0 else "")
        if not ok:
            missed.append(f"e ({label}): median queue overhead {judged:.2f} ms (target <= 2 ms)")
        rows.append(
            [
                "e",
                label,
                fmt(r.get("queue_median", float("nan"))),
                fmt(r.get("queue_p90", float("nan"))),
                fmt(r["server_median"]),
                fmt(r["server_p90"]),
                fmt(r["client_median"]),
                fmt(r["client_p90"]),
                fmt(r["queue_wait_median"]),
                fmt(r["post_median"]),
                fmt(r["decode_median"]),
                "<= 2 ms median",
                verdict(ok),
                join_notes(f"rounds {' / '.join(f'{v:.2f}' for v in r['rounds'])}" if r.get("rounds") else "",
                           load_note(data, f"e{wait_ms:g}")),
            ]
        )
    return (
        f"### Per-job queue overhead at light load ({meta['latency_jobs']} tiny {meta['tiny_format']} jobs, "
        "one at a time)\n\n"
        "queue = what latentq adds to the work the in-process loop does too: RQ's ended_at - enqueued_at minus "
        "the job's own decode_ms, encode_ms and store_ms (from its result record); server = ended_at - "
        "enqueued_at - decode_ms (so PNG and file write included); client = from the submit() call until "
        "Job.wait() returns (the public path: woken by the worker's pub/sub message, then one status read) - "
        "decode_ms. queue wait = started_at - enqueued_at (pickup + the batching window); post = ended_at - "
        "started_at - decode_ms (latent fetch, validation, PNG, store, marking it finished). Target judged on the "
        "queue median; each setting ran --rounds times, interleaved, and shows its median round (every round's "
        "queue median in the notes).\n\n"
        + markdown_table(["row", "worker", "queue median ms", "queue p90 ms", "server median ms", "server p90 ms",
                          "client median ms",
                          "client p90 ms", "queue wait ms", "post ms", "decode ms", "target", "met", "notes"], rows)
    )  # fmt: skip


def memory_markdown(data: dict, missed: list[str]) -> str:
    meta, runs, rows = data["meta"], data["memory"], []
    for r in runs:
        label = f"LATENTQ_RECORD_TTL={r['record_ttl']}, sampled {r['settle_s']:g} s after each stage"
        redis_ratio, rss_ratio = r["redis_all"] / r["redis_first"], r["rss_all"] / r["rss_first"]
        notes = join_notes(f"{r['per_job_bytes']:.0f} B/job; keys {r['keys_first']} -> {r['keys_all']}; empty "
                           f"{mib(r['redis_empty'])}; statuses answered {r['statuses_answered']}/{r['jobs']} "
                           f"({r['records_in_redis']} from Redis, the rest from the store)",
                           load_note(data, "f"))  # fmt: skip
        rows.append(["f", label, "Redis used_memory", mib(r["redis_first"]), mib(r["redis_all"]),
                     f"{redis_ratio:.2f}x", notes, ""])  # fmt: skip
        if "indexes_all" in r:  # runs before 2026-12-02 did not measure them
            rest_first, rest_all = r["redis_first"] - r["indexes_first"], r["redis_all"] - r["indexes_all"]
            redis_ratio = rest_all / rest_first
            rows.append(["f", label, "Redis used_memory less the bounded indexes", mib(rest_first), mib(rest_all),
                         f"{redis_ratio:.2f}x", f"indexes {mib(r['indexes_first'])} -> {mib(r['indexes_all'])}",
                         verdict(abs(redis_ratio - 1) <= 0.10)])  # fmt: skip
        else:
            rows[-1][-1] = verdict(abs(redis_ratio - 1) <= 0.10)
        rows.append(["f", label, "worker RSS", mib(r["rss_first"]), mib(r["rss_all"]), f"{rss_ratio:.2f}x", "",
                     verdict(abs(rss_ratio - 1) <= 0.10)])  # fmt: skip
        if abs(rss_ratio - 1) > 0.10:
            missed.append("f: worker RSS changed more than 10%")
        if abs(redis_ratio - 1) > 0.10:
            missed.append(f"f: Redis used_memory (less the bounded indexes) changed {redis_ratio:.2f}x")
        if r["statuses_answered"] != r["jobs"]:
            missed.append(f"f: only {r['statuses_answered']} of {r['jobs']} job statuses answered after the run")
    return (
        f"### Memory: {meta['memory_jobs']} tiny jobs through 1 worker, sampled after {meta['memory_first']} "
        "and after all\n\n"
        "Redis keeps a finished job's RQ record (job hash, result stream, finished-registry entry, ~7 KB) for "
        "LATENTQ_RECORD_TTL (default 60 s); the job's record in the object store answers after that, for "
        "LATENTQ_RESULT_TTL. Each sample waits until the record TTL and the worker's registry cleanup have "
        "passed, so it shows what Redis holds per job for good; at a steady rate r, Redis also holds about "
        "r x LATENTQ_RECORD_TTL recent records. Two indexes grow with jobs up to a bound, and are shown apart: "
        "each tenant's recent jobs (`GET /v1/jobs`, at most 10,000 ids, about 130 B each) and each queue's "
        "fair-share order (at most the queue's length at its last submit). The target is judged without them. "
        "After the run every job's status is read back through Client.job_info.\n\n"
        + markdown_table(["row", "run", "measure", f"after {meta['memory_first']}", f"after {meta['memory_jobs']}",
                          "ratio", "notes", "within 10%"], rows)
    )  # fmt: skip


def render_markdown(data: dict, final: bool) -> str:
    """The whole report; also sets ``data["targets_missed"]``."""
    meta, sections, missed = data["meta"], [], []
    for key, render in (("throughput", throughput_markdown), ("dispatch", dispatch_markdown),
                        ("light_load", light_load_markdown), ("memory", memory_markdown)):  # fmt: skip
        if data.get(key):
            sections.append(render(data, missed))
    for rows, message in data["errors"]:
        missed.append(f"rows {rows}: the benchmark itself failed: {message[:300]}")
        sections.append(f"### Rows {rows}: failed\n\n```\n{message[:2000]}\n```")
    data["targets_missed"] = missed
    text = (
        f"## latentq CPU benchmark ({meta['stamp']}{', --quick' if meta['quick'] else ''}"
        f"{'' if final else ', partial: still running or stopped'})\n\n"
        f"Machine: {meta['machine']}. TAEF2 real weights from `{meta['taef2']}`. Output files of every system "
        f"in `{meta.get('work_dir') or 'the system temp dir'}`. Run time {meta['run_s']:.0f} s.\n"
        f"Load average (1 / 5 min) at start {meta['load_at_start']}, at end {meta['load_at_end']}; other "
        f"processes used {meta['foreign_cpu_s']:.0f} CPU-seconds during the run ({meta['foreign_cores']:.2f} "
        f"cores on average).\nCommand: `{meta['command']}`"
    )
    text += f"\nThe same numbers as JSON: `{meta['json']}`" + (
        f"; plot: `{meta['plot']}`." if meta.get("plot") else "."
    )
    text += "\n\n" + "\n\n".join(sections) + "\n\n### Targets missed\n\n" + ("\n".join(f"- {m}" for m in missed)
                                                                             or "- none") + "\n"  # fmt: skip
    if data["retried"]:
        text += ("\n### Rows rerun because other processes disturbed them (least disturbed attempt reported)\n\n"
                 + "\n".join(f"- {r}" for r in data["retried"]) + "\n")  # fmt: skip
    disturbed = [f"{row}: other processes used {c:.2f} cores on average" for row, c in data["load"].items()
                 if c >= DISTURBED_CORES]  # fmt: skip
    if disturbed:
        text += ("\n### Rows disturbed by other processes (rerun them on a quiet machine)\n\n"
                 + "\n".join(f"- {d}" for d in disturbed) + "\n")  # fmt: skip
    return text


# --------------------------------------------------------------------------------------------- JSON
def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def to_json(data: dict) -> str:
    """The results as strict JSON (NaN -> null). Each throughput row gets its setup, the cores other processes
    used meanwhile, and its images/s ratio to the in-process baseline (mean of a and a2) and to a alone."""
    data = _clean(data)
    rows = data.get("throughput", {}).get("rows", {})
    if "a" in rows:
        base, a_rate = baselines(data)
        data["throughput"]["baseline_images_per_s"] = base
        for row, r in rows.items():
            r["setup"] = row_label(row, data["meta"]["max_batch"])
            r["other_procs_cores"] = data["load"].get(row, 0.0)
            r["ratio_vs_baseline"] = r["images_per_s"] / base
            r["ratio_vs_a"] = r["images_per_s"] / a_rate
    return json.dumps(data, indent=2, allow_nan=False) + "\n"


# --------------------------------------------------------------------------------------------- plot
def write_plot(data: dict, path: Path) -> str:
    """Three panels: images/s by system, p50/p99 latency, dispatch jobs/s. Returns what happened, for the log."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed (pip install -e '.[bench]', or pip install matplotlib)"
    meta, rows = data["meta"], data.get("throughput", {}).get("rows", {})
    if "a" not in rows:
        return "no plot: the throughput rows did not run"
    base, _ = baselines(data)
    mb = meta["max_batch"]
    systems = []
    for label, keys, colour in PLOT_SYSTEMS:
        present = [k for k in keys if k in rows]
        if not present:
            continue
        values = [rows[k]["images_per_s"] for k in present]
        disturbed = any(data["load"].get(k, 0.0) >= DISTURBED_CORES for k in present)
        systems.append(
            {
                "label": label.format(mb=str(mb).split(",")[0]) + (" *" if disturbed else ""),
                "colour": colour,
                "ips": sum(values) / len(values),
                "spread": (min(values), max(values)),
                "p50": sum(rows[k]["p50_ms"] for k in present) / len(present),
                "p99": sum(rows[k]["p99_ms"] for k in present) / len(present),
                "disturbed": disturbed,
            }
        )
    has_d = bool(data.get("dispatch"))
    fig, axes = plt.subplots(1, 3 if has_d else 2, figsize=(18 if has_d else 14, 6.2),
                             gridspec_kw={"width_ratios": [3, 3, 1.3] if has_d else [3, 3]})  # fmt: skip
    x = list(range(len(systems)))
    labels = [s["label"] for s in systems]
    hw = meta["latent_hw"]

    ax = axes[0]
    bars = ax.bar(x, [s["ips"] for s in systems], color=[s["colour"] for s in systems], edgecolor="black",
                  hatch=None, linewidth=0.6)  # fmt: skip
    for bar, s in zip(bars, systems):
        if s["disturbed"]:
            bar.set_hatch("//")
        low, high = s["spread"]
        if high > low:
            ax.plot([bar.get_x() + bar.get_width() / 2] * 2, [low, high], color="black", linewidth=1.2)
        ax.annotate(
            f"{s['ips']:.1f}/s\n{s['ips'] / base:.2f}x",
            (bar.get_x() + bar.get_width() / 2, high),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=9,
        )
    ax.axhline(base, color="#555555", linestyle="--", linewidth=1)
    ax.set_ylim(0, max(s["spread"][1] for s in systems) * 1.25)
    ax.set_ylabel("images / s (higher is better)")
    ax.set_title(f"Throughput: {meta['images']} latents 1x{meta['channels']}x{hw}x{hw} -> {hw * 8}px PNG\n"
                 "label: images/s, ratio vs the in-process loop (dashed line); black line: a..a2 range",
                 fontsize=10)  # fmt: skip

    ax = axes[1]
    width = 0.38
    p50 = ax.bar([i - width / 2 for i in x], [s["p50"] for s in systems], width, label="p50",
                 color=[s["colour"] for s in systems], edgecolor="black", linewidth=0.6)  # fmt: skip
    p99 = ax.bar([i + width / 2 for i in x], [s["p99"] for s in systems], width, label="p99",
                 color=[s["colour"] for s in systems], edgecolor="black", linewidth=0.6, alpha=0.55)  # fmt: skip
    for group in (p50, p99):
        for bar in group:
            ax.annotate(
                f"{bar.get_height():.0f}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=8,
            )
    ax.set_ylim(0, max(s["p99"] for s in systems) * 1.15)
    ax.set_ylabel("ms from submit to result (lower is better)")
    ax.legend(["p50 (solid)", "p99 (pale)"], loc="upper left", fontsize=9)
    ax.set_title(f"End-to-end latency, all {meta['images']} submitted at once", fontsize=10)
    for ax in axes[:2]:
        ax.set_xticks(x, labels, fontsize=8.5)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)

    if has_d:
        d, ax = data["dispatch"], axes[2]
        pair = [("latentq\n1 worker", d["latentq"], "#3182bd"), ("plain RQ\ndecode_job", d["plain_rq"], "#ff7f0e")]
        bars = ax.bar(
            [0, 1],
            [p[1]["jobs_per_s"] for p in pair],
            color=[p[2] for p in pair],
            edgecolor="black",
            linewidth=0.6,
            hatch="//" if data["load"].get("d", 0.0) >= DISTURBED_CORES else None,
        )
        for bar, (_, r, _) in zip(bars, pair):
            ax.annotate(f"{r['jobs_per_s']:.0f} jobs/s\nqueue {r['queue_ms_per_job']:.1f} ms/job",
                        (bar.get_x() + bar.get_width() / 2, bar.get_height()), xytext=(0, 3),
                        textcoords="offset points", ha="center", va="bottom", fontsize=8.5)  # fmt: skip
        ax.set_xticks([0, 1], [p[0] for p in pair], fontsize=8.5)
        ax.set_ylim(0, max(p[1]["jobs_per_s"] for p in pair) * 1.3)
        ax.set_ylabel("tiny jobs / s")
        ax.set_title(f"Dispatch: {d['latentq']['jobs']} tiny jobs\nlatentq / plain RQ = {d['ratio']:.2f}x",
                     fontsize=10)  # fmt: skip
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)

    footnote = "* hatched: other processes used >= 0.10 cores during the row (noisy)" if any(
        s["disturbed"] for s in systems) else ""  # fmt: skip
    fig.suptitle(f"latentq CPU benchmark, {meta['stamp']}{' (--quick)' if meta['quick'] else ''}: "
                 f"{meta['machine']}", fontsize=10)  # fmt: skip
    if footnote:
        fig.text(0.01, 0.01, footnote, fontsize=8, color="#444444")
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"wrote {path}"
