"""The report of an ``etx load`` run, in a folder the user names: ``report.json`` (every
figure and the settings; its schema is ``REPORT_SCHEMA``), ``report.md`` (a summary a
person reads) and PNG charts drawn with matplotlib:

- ``timeline.png``: commands answered per second and the p99 latency of each second;
- ``latency.png``: the latency distribution (percentile plot, log scales);
- ``ramp.png``: latency percentiles against the offered rate (a ramp only).

Each states the machine (cores, CPU model, memory), etx's version and the settings.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import msgspec

REPORT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "etx load report",
    "type": "object",
    "required": ["version", "started", "machine", "settings", "runs"],
    "properties": {
        "version": {"type": "string"},
        "started": {"type": "string"},
        "machine": {
            "type": "object",
            "required": ["cores", "cpu", "memory_gib", "python", "system"],
        },
        "settings": {"type": "object", "required": ["exchange", "mode", "mix", "sessions"]},
        "runs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "mode", "target_rate", "seconds", "sent", "answered", "rejected", "unanswered",
                             "fills", "trades", "rate", "send_rate", "latency_us", "distribution", "timeline"],
                "properties": {
                    "latency_us": {"type": "object", "required": ["count", "p50", "p90", "p99", "p99_9", "max"]},
                    "timeline": {"type": "array", "items": {
                        "type": "object", "required": ["t", "sent", "answered", "rejected", "p50_us", "p99_us"]}},
                },
            },
        },
        "ramp": {"type": ["object", "null"]},
        "reconciliation": {"type": ["object", "null"]},
        "lobster": {"type": ["object", "null"]},
    },
}


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {"cores": os.cpu_count() or 0, "cpu": cpu, "memory_gib": memory, "python": platform.python_version(),
            "system": f"{platform.system()} {platform.release()}"}


def version() -> str:
    try:
        v = metadata.version("etx")
    except metadata.PackageNotFoundError:
        v = "unknown"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{v} ({commit})" if commit else v


def new_report(settings: dict[str, Any]) -> dict[str, Any]:
    return {"version": version(), "started": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
            "settings": settings, "runs": [], "ramp": None, "reconciliation": None, "lobster": None}


def add_run(report: dict[str, Any], name: str, result: Any) -> dict[str, Any]:
    run = {"name": name, **msgspec.to_builtins(result)}
    report["runs"].append(run)
    return run


def write(report: dict[str, Any], folder: Path) -> list[Path]:
    """Write report.json, report.md and the charts; the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "report.json", folder / "report.md"]
    paths[0].write_text(json.dumps(report, indent=1) + "\n")
    charts = draw(report, folder)
    paths[1].write_text(markdown(report, [c.name for c in charts]))
    return paths + charts


def _us(v: float) -> str:
    return f"{v / 1000:,.2f} ms" if v >= 1000 else f"{v:,.0f} µs"


def markdown(report: dict[str, Any], charts: list[str]) -> str:
    m, s = report["machine"], report["settings"]
    lines = [
        "# etx load report", "",
        f"- started {report['started']}, etx {report['version']}",
        f"- machine: {m['cores']} cores, {m['cpu']}, {m['memory_gib']} GiB, Python {m['python']}, {m['system']}",
        f"- exchange: {s['exchange']}; sessions: {s['sessions']}; mode: {s['mode']}",
        f"- mix: {s['mix']}",
        f"- command: `{s.get('command', '')}`", "",
    ]
    ramp = report.get("ramp")
    if ramp:
        lines += ["## Ramp", "",
                  f"Steps of {ramp['step_seconds']:g} s from {ramp['start']:,}/s by {ramp['step']:,}/s; a step passes "
                  f"while p99 ≤ {ramp['p99_limit_ms']:g} ms, errors (refusals by the gateway and commands never "
                  f"answered; rejections by the market rules are not errors) ≤ {ramp['error_limit']:.2%} and the "
                  f"rate answered keeps up with the rate offered (≥ 95 %).", "",
                  f"**Highest sustainable rate: {ramp['sustainable']:,} commands/s**"
                  + (f" (the next step failed: {ramp['stopped_by']})" if ramp.get("stopped_by") else ""), "",
                  "| offered/s | answered/s | p50 | p99 | p99.9 | max | errors | passed |", "|---|---|---|---|---|---|---|---|"]
        for st in ramp["steps"]:
            lat = st["latency_us"]
            lines.append(f"| {st['target_rate']:,} | {st['rate']:,.0f} | {_us(lat['p50'])} | {_us(lat['p99'])} | "
                         f"{_us(lat['p99_9'])} | {_us(lat['max'])} | {st['error_share']:.2%} | "
                         f"{'yes' if st['passed'] else 'no'} |")
        lines.append("")
    lines += ["## Runs", "", "| run | mode | offered/s | sent | answered | unanswered | answered/s | p50 | p99 | p99.9 | "
              "max | errors | fills |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        lat = r["latency_us"]
        sent, answered = sum(r["sent"].values()), sum(r["answered"].values())
        lines.append(f"| {r['name']} | {r['mode']} | {r['target_rate'] or 'as fast as answered'} | {sent:,} | "
                     f"{answered:,} | {r['unanswered']:,} | {r['rate']:,.0f} | {_us(lat['p50'])} | {_us(lat['p99'])} | "
                     f"{_us(lat['p99_9'])} | {_us(lat['max'])} | {sum(r['rejected'].values()):,} | {r['fills']:,} |")
    lines.append("")
    for r in report["runs"]:
        if r["rejected"]:
            lines.append(f"Rejections in {r['name']} (kind:reason): "
                         + ", ".join(f"{k} {v:,}" for k, v in sorted(r["rejected"].items())))
    rec = report.get("reconciliation")
    if rec:
        lines += ["", "## Counts reconciled with the exchange's", ""]
        for name, row in rec["checks"].items():
            lines.append(f"- {name}: load {row['load']:,}, exchange {row['exchange']:,}: "
                         f"{'equal' if row['load'] == row['exchange'] else 'DIFFERENT'}")
        if rec.get("note"):
            lines.append(f"- {rec['note']}")
    lob = report.get("lobster")
    if lob:
        lines += ["", "## LOBSTER replay through the gateway", "",
                  f"{lob['file']}: {lob['rows']:,} rows, {lob['commands']:,} commands sent "
                  f"({', '.join(f'{k} {v:,}' for k, v in lob['sent'].items())}); pace {lob['pace']}; "
                  f"not applicable {lob['not_applicable']:,}, ignored {lob['ignored']:,}."]
    if charts:
        lines += ["", "## Charts", ""] + [f"![{c}]({c})" for c in charts]
    return "\n".join(lines) + "\n"


def save(fig: Any, caption: str, path: Path) -> Path:
    """Write a chart with the machine's caption at its foot, and free it."""
    import matplotlib.pyplot as plt

    fig.text(0.01, 0.01, caption, fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw(report: dict[str, Any], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = report["machine"]
    caption = (f"etx {report['version']} · {m['cores']} cores, {m['cpu']}, {m['memory_gib']} GiB · "
               f"{report['started']}")
    out: list[Path] = []
    runs = [r for r in report["runs"] if r["timeline"]]
    if runs:
        main = max(runs, key=lambda r: len(r["timeline"]))
        fig, ax = plt.subplots(figsize=(9, 4.5))
        t = [p["t"] for p in main["timeline"]]
        ax.plot(t, [p["answered"] for p in main["timeline"]], color="tab:blue", label="answered/s")
        ax.plot(t, [p["sent"] for p in main["timeline"]], color="tab:gray", linestyle=":", label="sent/s")
        ax.set_xlabel("seconds")
        ax.set_ylabel("commands per second")
        ax2 = ax.twinx()
        ax2.plot(t, [p["p99_us"] / 1000 for p in main["timeline"]], color="tab:red", label="p99 latency")
        ax2.set_ylabel("p99 latency of the second (ms)")
        ax2.set_ylim(0, max([p["p99_us"] / 1000 for p in main["timeline"]] + [0.001]) * 1.15)
        ax.set_ylim(0, max([p["sent"] for p in main["timeline"]] + [p["answered"] for p in main["timeline"]] + [1]) * 1.15)
        lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
        ax.legend(lines, [str(x.get_label()) for x in lines], loc="lower right")
        ax.set_title(f"Throughput and p99 over time: run {main['name']}")
        out.append(save(fig, caption, folder / "timeline.png"))

        fig, ax = plt.subplots(figsize=(9, 4.5))
        for r in report["runs"]:
            pts = [(p, v) for p, v in r["distribution"] if p < 100]
            if not pts:
                continue
            xs = [1 / (1 - p / 100) for p, _ in pts]
            ax.plot(xs, [v / 1000 for _, v in pts], marker="o", label=f"{r['name']} (max {_us(r['latency_us']['max'])})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ticks = [2, 10, 100, 1000, 10000, 100000]
        ax.set_xticks(ticks, ["p50", "p90", "p99", "p99.9", "p99.99", "p99.999"])
        ax.set_xlabel("percentile")
        ax.set_ylabel("latency (ms), from the intended send time to the answer")
        ax.set_title("Latency distribution")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        out.append(save(fig, caption, folder / "latency.png"))
    ramp = report.get("ramp")
    if ramp and ramp["steps"]:
        fig, ax = plt.subplots(figsize=(9, 4.5))
        xs = [st["target_rate"] for st in ramp["steps"]]
        for key, label, style in (("p50", "p50", "-"), ("p99", "p99", "-"), ("p99_9", "p99.9", "--"),
                                  ("max", "max", ":")):
            ax.plot(xs, [st["latency_us"][key] / 1000 for st in ramp["steps"]], style, marker="o", label=label)
        ax.axhline(ramp["p99_limit_ms"], color="tab:red", linewidth=0.8, label=f"p99 limit {ramp['p99_limit_ms']:g} ms")
        if ramp["sustainable"]:
            ax.axvline(ramp["sustainable"], color="tab:green", linewidth=0.8,
                       label=f"sustainable {ramp['sustainable']:,}/s")
        ax.set_yscale("log")
        ax.set_xlabel("offered rate (commands per second, open loop)")
        ax.set_ylabel("latency (ms)")
        ax.set_title("Latency against the offered rate")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        out.append(save(fig, caption, folder / "ramp.png"))
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.loadreport FOLDER``: draw a report's Markdown and charts
    again from its report.json (after a change to how they are drawn)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not (Path(args[0]) / "report.json").is_file():
        print("usage: python -m benchmarks.loadreport FOLDER (a folder holding report.json)", file=sys.stderr)
        return 2
    folder = Path(args[0])
    write(json.loads((folder / "report.json").read_text()), folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
