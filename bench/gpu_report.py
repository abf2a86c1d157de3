"""bench/gpu.py's rows and its markdown report, rewritten (atomically) after every section of every model.

Each model has four rows: ``L best`` (the best of L's grid), ``L matched`` (L at Q's own settings: the
worker's dtype, layout and batch), ``A`` and ``Q``. A row that was not measured carries its status
instead of a rate: ``failed: <reason>``, ``out of time``, ``interrupted``, ``not run: ...``.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import fmt, markdown_table

KINDS = ("L best", "L matched", "A", "Q")
SECTION_OF = {"L best": "L", "L matched": "L", "A": "A", "Q": "Q"}
PENDING = "not run yet"


@dataclass
class Row:
    kind: str  # one of KINDS
    setting: str = ""
    rate: float = math.nan  # outputs (images or frames) per second
    peak_mib: float | None = None
    note: str = ""
    status: str = PENDING  # "ok", or why there is no rate

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.rate == self.rate and self.rate > 0


@dataclass
class Result:
    case: Any  # gpu.Case
    rows: dict[str, Row] = field(default_factory=dict)
    grid: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    matched: dict[str, Any] | None = None  # Q's settings (dtype, batch, channels_last, compile)

    def __post_init__(self) -> None:
        for kind in KINDS:
            self.rows.setdefault(kind, Row(kind))

    def settle(self, status: str) -> None:
        """Every row still pending gets ``status`` (the model stopped here)."""
        for row in self.rows.values():
            if row.status == PENDING:
                row.status = status

    @property
    def state(self) -> str:
        statuses = [row.status for row in self.rows.values()]
        if all(s == "ok" for s in statuses):
            return "done"
        if any(s.startswith("failed") for s in statuses):
            return "failed"
        if any(s == "out of time" for s in statuses):
            return "out of time"
        if any(s.startswith("interrupted") for s in statuses):
            return "interrupted"
        return "pending" if all(s == PENDING for s in statuses) else "partial"


def one_line(exc: BaseException, limit: int = 160) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def setting_text(row: dict[str, Any]) -> str:
    parts = [row["dtype"], f"batch {row['batch']}"]
    if row.get("channels_last"):
        parts.append("channels_last")
    if row.get("compile"):
        parts.append("compiled")
    return ", ".join(parts)


def write_atomic(path: Path, text: str) -> None:
    """The whole file or the previous one, never half of it (a kill mid-write leaves the last version)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _ratio(value: Row, base: Row) -> str:
    return f"{value.rate / base.rate:.2f}" if value.ok and base.ok else "n/a"


def _rate_cell(row: Row, unit: str) -> str:
    return f"{fmt(row.rate, 1)} {unit}" if row.ok else row.status


def render(results: list[Result], *, args: Any, argv: list[str] | None, device_name: str, seconds: float,
           environment: str, stage: str) -> str:  # fmt: skip
    """The markdown report. ``stage``: where the run is (written into the header: the file is rewritten
    after every section, so a killed run leaves the version of its last section)."""
    import torch

    rows = []
    for result in results:
        case, r = result.case, result.rows
        unit = "frames/s" if case.video else "images/s"
        for kind in KINDS:
            row = r[kind]
            ratios = ["", "", ""]
            if kind == "Q":
                ratios = [_ratio(row, r["L matched"]), _ratio(row, r["L best"]), _ratio(row, r["A"])]
            secs = result.seconds.get(SECTION_OF[kind]) if kind != "L matched" else None
            rows.append([case.label, kind, row.setting, _rate_cell(row, unit),
                         "n/a" if row.peak_mib is None else f"{row.peak_mib:.0f}", *ratios,
                         "" if secs is None else f"{secs:.0f}", row.note])  # fmt: skip
    targets = []
    for result in results:
        r, label = result.rows, result.case.label
        if result.case.model in ("sd15", "sdxl"):
            for base, what in (("L best", "vs L best (the limit)"), ("L matched", "vs L at Q's settings")):
                targets.append([label, f"Q/L >= 0.9, {what}", _ratio(r["Q"], r[base]),
                                _met(r["Q"], r[base], 0.9)])  # fmt: skip
        if result.case.model == "sd15":
            targets.append([label, "Q/A >= 2.5", _ratio(r["Q"], r["A"]), _met(r["Q"], r["A"], 2.5)])
    grid = []
    for result in results:
        for row in result.grid:
            used = [name for name, match in (("best", row.get("best")), ("matched", row.get("matched"))) if match]
            grid.append([result.case.model, row["dtype"], row["batch"], "yes" if row["channels_last"] else "",
                         "yes" if row["compile"] else "", fmt(row.get("ms", math.nan), 1),
                         fmt(row.get("rate", math.nan), 1),
                         "n/a" if row.get("peak_mib") is None else f"{row['peak_mib']:.0f}", ", ".join(used),
                         row.get("error", "")])  # fmt: skip
    states = [result.state for result in results]
    counts = ", ".join(f"{states.count(s)} {s}" for s in dict.fromkeys(states))
    command = "python bench/gpu.py " + " ".join(argv if argv is not None else sys.argv[1:])
    small = ", --small smoke run: tiny configs, the numbers mean nothing" if args.small else ""
    return (
        f"## latentq: bare decode (L), the user's loop (A), latentq (Q) ({dt.datetime.now():%Y-%m-%d %H:%M}{small})\n\n"
        f"{device_name}, torch {torch.__version__}; {environment}. Command: `{command.strip()}`. "
        f"Run so far {seconds:.0f} s (budget {args.minutes:g} min).\n\n"
        f"**{stage}.** Models: {counts}.\n\n"
        + markdown_table(["model", "row", "setting", "rate", "peak GPU MiB", "Q/L matched", "Q/L best", "Q/A", "s",
                          "note"], rows)  # fmt: skip
        + "\n\n" + markdown_table(["model", "target", "measured", "met"], targets)
        + "\n\nL's grid (one decode call each: median ms, outputs/s, max_memory_allocated over the timed calls; "
        "`matched`: the row at Q's settings, measured first):\n\n"
        + markdown_table(["model", "dtype", "batch", "channels_last", "compiled", "ms/call", "rate", "peak MiB",
                          "used as", "error"], grid)  # fmt: skip
        + "\n\n" + NOTES
    )


def _met(value: Row, base: Row, target: float) -> str:
    if not (value.ok and base.ok):
        return "n/a"
    return "yes" if value.rate >= target * base.rate else "**no**"


NOTES = (
    "L best: the best of L's grid (dtype x layout x batch, and with --compile the compiled best); L matched: the "
    "bare decode at Q's own settings (the worker's dtype, memory layout and batch size, compiled when the worker "
    "is), so Q/L matched is the queue's own cost (Redis, the copy to the device, encoding, storing, the "
    "bookkeeping) and Q/L best adds what the worker's settings leave on the table. L and A run in this process "
    "(peak: torch.cuda.max_memory_allocated, the model's weights included). Q: a `latentq worker` per model, "
    "serving that model only: all started at once and loaded (with --compile: compiled) side by side before "
    "anything is timed, each idle until its model's Q and stopped after it; its rate is from the first submit "
    "to the last job finished, the worker warm (one batch decoded first); its peak is the worker's own "
    "torch.cuda.max_memory_allocated over its life (its stats in Redis): this model's weights, the warm-up "
    "batch and Q's batches, nothing of the other models; nvidia-smi's figure for its process (CUDA context "
    "and allocator cache included) is in the note. A row without a rate says why: `failed: ...` (its section "
    "raised: an error, a failed job, a dead worker, a compile error), `out of time` (the run's budget was "
    "spent before it), `interrupted` (SIGTERM or Ctrl-C), `not run: ...` (an earlier section of the model "
    "failed).\n"
)
