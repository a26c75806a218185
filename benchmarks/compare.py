"""Compare two saved pytest-benchmark runs and flag the benchmarks that got slower by
more than their measured noise.

    python -m benchmarks.compare [--storage DIR] [--no-fail] [OLD.json NEW.json]

Without files it takes the two newest runs that ``pytest --benchmark-autosave`` saved
under ``DIR/<machine id>/`` (``.benchmarks`` by default; the machine id is
pytest-benchmark's, e.g. ``Linux-CPython-3.11-64bit``), ordered by their run counter:
``./dev bench`` saves a run and then runs this.

Per benchmark (matched by its full name) it prints the median time of each run, the
ratio new/old, and the noise: each run's interquartile range relative to its own
median (the spread of its rounds). A benchmark is a REGRESSION when

    new median / old median > 1 + max(5 %, 2 x the larger of the two relative IQRs)

and "faster" when the ratio is below 1 minus the same margin; anything between is
within noise. A benchmark with fewer than ``ROUNDS_MIN`` rounds in either run has no
measured spread and is not judged (shown, never a regression). A benchmark in only one
of the runs is listed as new or gone. Two runs of different builds (compiled or
``ETX_PURE_PYTHON``), machines or Python versions are compared anyway, with a note.

A run's spread is the noise within it, not the drift between runs on a shared machine:
runs of the same code here differ by up to a third (benchmarks/README.md has the
counts). So when the runs come from the storage, the drift between runs is measured
too: over the previous ``HISTORY`` saved runs, each benchmark's medians spread by
``drift`` = (highest - lowest) / lowest, and the margin becomes

    max(5 %, 2 x the larger relative IQR, drift)

against the median of those previous medians (not only the last run), after dividing out
the machine's shift: when the median ratio of all judged benchmarks (the plain book's,
which no change to etx touches, among them) is above 1, each ratio is divided by it
before it is judged. Until at least
``HISTORY_MIN`` previous runs hold a benchmark its drift is unknown: it is shown, and
called a "candidate" rather than a REGRESSION when it is slower than the within-run
margin allows, so that ``./dev bench`` fails only on a slowdown beyond the noise it has
measured. The median ratio of all judged benchmarks is printed to show a shift of the
whole machine.

Exit status: 1 when any benchmark regressed (unless ``--no-fail``), 2 when a file
cannot be read, else 0 -- also when there is no previous run to compare with, which is
said in one line.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MARGIN_MIN = 0.05  # the smallest change called a regression, whatever the noise
NOISE_FACTOR = 2.0  # a regression is slower by more than this many relative IQRs
ROUNDS_MIN = 3  # below this, a run's IQR says nothing about its noise
HISTORY = 5  # previous saved runs whose medians measure the drift between runs
HISTORY_MIN = 3  # previous runs needed before the drift is known
STORAGE_DEFAULT = ".benchmarks"
JUDGED = ("REGRESSION", "candidate", "faster", "within noise")


def machine_id() -> str:
    """The folder pytest-benchmark saves this interpreter's runs in (the same format as
    ``pytest_benchmark.utils.get_machine_id``, without importing the plugin)."""
    return "{}-{}-{}-{}".format(platform.system(), platform.python_implementation(),
                                ".".join(platform.python_version_tuple()[:2]), platform.architecture()[0])


@dataclass(frozen=True)
class Bench:
    median_s: float
    iqr_s: float
    rounds: int

    @property
    def noise(self) -> float:
        """The interquartile range relative to the median."""
        return self.iqr_s / self.median_s if self.median_s > 0 else 0.0


@dataclass(frozen=True)
class Run:
    path: Path
    when: str
    commit: str
    machine: dict[str, Any]
    benches: dict[str, Bench]

    def describe(self) -> str:
        load = self.machine.get("load_average_at_start")
        busy = f", load average {load[0]} at start" if load else ""
        return f"{self.path.name} ({self.when[:19].replace('T', ' ')} UTC, commit {self.commit}{busy})"


class RunError(Exception):
    pass


def load(path: Path) -> Run:
    """One saved run (pytest-benchmark's JSON: ``benchmarks[].fullname`` and
    ``stats.median/iqr/rounds`` in seconds)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        benches = {b["fullname"]: Bench(float(b["stats"]["median"]), float(b["stats"]["iqr"]),
                                        int(b["stats"]["rounds"])) for b in data["benchmarks"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RunError(f"{path}: expected a pytest-benchmark run (benchmarks[].fullname, stats.median, "
                       f"stats.iqr, stats.rounds), got {type(e).__name__}: {e}") from e
    commit = data.get("commit_info") or {}
    label = str(commit.get("id", "?"))[:10] + (" with uncommitted changes" if commit.get("dirty") else "")
    return Run(path, str(data.get("datetime", "?")), label, data.get("machine_info") or {}, benches)


def saved_runs(storage: Path) -> list[Path]:
    """This interpreter's saved runs, oldest first (by the counter the file names
    start with)."""
    folder = storage / machine_id()
    return sorted(p for p in folder.glob("[0-9][0-9][0-9][0-9]_*.json") if p.is_file())


@dataclass(frozen=True)
class Row:
    name: str
    old: Bench | None
    new: Bench | None
    verdict: str  # REGRESSION, candidate, faster, within noise, not judged, new, gone
    drift: float | None = None  # between the previous runs' medians (None: not measured)

    @property
    def ratio(self) -> float | None:
        if self.old is None or self.new is None or self.old.median_s <= 0:
            return None
        return self.new.median_s / self.old.median_s


def margin(old: Bench, new: Bench, drift: float | None = None) -> float:
    """How much slower (as a fraction) the new median must be to be a regression."""
    return max(MARGIN_MIN, NOISE_FACTOR * max(old.noise, new.noise), drift or 0.0)


def judge(old: Bench | None, new: Bench | None, drift: float | None = None, drift_needed: bool = False,
          shift: float = 1.0) -> str:
    if old is None:
        return "new"
    if new is None:
        return "gone"
    if min(old.rounds, new.rounds) < ROUNDS_MIN or old.median_s <= 0:
        return "not judged"
    ratio = new.median_s / old.median_s / shift
    limit = margin(old, new, drift)
    if ratio > 1 + limit:
        return "candidate" if drift_needed and drift is None else "REGRESSION"
    if ratio < 1 - limit:
        return "faster"
    return "within noise"


def compare(old: Run, new: Run, history: list[Run] | None = None) -> list[Row]:
    """One row per benchmark of either run: the new run's in its order, then the gone.
    With ``history`` (the previous saved runs, oldest first, ``old`` the last of them)
    the new run is compared with the median of their medians, against a margin that
    includes their drift (see the module docstring)."""
    names = list(new.benches) + [n for n in old.benches if n not in new.benches]
    rows = []
    for n in names:
        before, after = old.benches.get(n), new.benches.get(n)
        drift = None
        if history is not None and before is not None:
            medians = [r.benches[n].median_s for r in history[-HISTORY:] if n in r.benches]
            if len(medians) >= HISTORY_MIN and min(medians) > 0:
                drift = (max(medians) - min(medians)) / min(medians)
                before = Bench(statistics.median(medians), before.iqr_s, before.rounds)
        rows.append(Row(n, before, after, judge(before, after, drift, history is not None), drift))
    if history is not None:
        # A slowdown most benchmarks share (the plain book's among them, which no change
        # to etx touches) is the machine's: divided out before judging each one.
        shift = machine_shift(rows)
        if shift > 1.0:
            rows = [Row(r.name, r.old, r.new, judge(r.old, r.new, r.drift, True, shift), r.drift) for r in rows]
    return rows


def machine_shift(rows: list[Row]) -> float:
    ratios = [r.ratio for r in rows if r.verdict in JUDGED and r.ratio is not None]
    return statistics.median(ratios) if len(ratios) >= 5 else 1.0


def differences(old: Run, new: Run) -> list[str]:
    """What differs between the runs' machines and builds, for a note."""
    def key(run: Run) -> dict[str, Any]:
        m = run.machine
        return {"machine": m.get("node"), "processor": (m.get("cpu") or {}).get("brand_raw"),
                "Python": m.get("python_version"), "build": m.get("etx_build")}

    a, b = key(old), key(new)
    return [f"{k}: {a[k]} -> {b[k]}" for k in a if a[k] != b[k]]


def seconds(value: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if value >= scale:
            return f"{value / scale:.3f} {unit}"
    return f"{value / 1e-9:.1f} ns"


def short(name: str) -> str:
    return name.removeprefix("benchmarks/")


def report(old: Run, new: Run, rows: list[Row]) -> str:
    lines = [f"old: {old.describe()}", f"new: {new.describe()}"]
    lines += [f"note: the runs differ, {d}" for d in differences(old, new)]
    width = max([len(short(r.name)) for r in rows] + [9])
    lines.append(f"{'benchmark':<{width}}  {'old median':>12}  {'new median':>12}  {'ratio':>6}  "
                 f"{'noise old/new':>15}  {'drift':>6}  {'margin':>6}  verdict")
    for r in rows:
        old_s = seconds(r.old.median_s) if r.old else "-"
        new_s = seconds(r.new.median_s) if r.new else "-"
        ratio = f"{r.ratio:.3f}" if r.ratio is not None else "-"
        noise = " / ".join(f"{b.noise:5.1%}" if b else "    -" for b in (r.old, r.new))
        limit = f"{margin(r.old, r.new, r.drift):.1%}" if r.old and r.new else "-"
        drift = f"{r.drift:.1%}" if r.drift is not None else "-"
        lines.append(f"{short(r.name):<{width}}  {old_s:>12}  {new_s:>12}  {ratio:>6}  {noise:>15}  {drift:>6}  "
                     f"{limit:>6}  {r.verdict}")
    counts = Counter(r.verdict for r in rows)
    lines.append(", ".join(f"{n} {v}" for v, n in counts.items()) + f" (of {len(rows)})")
    ratios = [r.ratio for r in rows if r.verdict in JUDGED and r.ratio is not None]
    if ratios:
        # A shift that most benchmarks share (the plain book's, which no change to etx
        # touches, among them) is more likely the machine than the code.
        lines.append(f"median ratio of the {len(ratios)} judged: {statistics.median(ratios):.3f}")
    regressed = [short(r.name) for r in rows if r.verdict == "REGRESSION"]
    if regressed:
        lines.append("slower beyond the noise: " + ", ".join(regressed))
    candidates = [short(r.name) for r in rows if r.verdict == "candidate"]
    if candidates:
        lines.append(f"slower than the within-run noise, drift between runs not measured yet (fewer than "
                     f"{HISTORY_MIN} previous runs): run ./dev bench again to judge: " + ", ".join(candidates))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path, metavar="RUN",
                        help="two saved runs, OLD.json NEW.json (default: the two newest in the storage)")
    parser.add_argument("--storage", type=Path, default=Path(STORAGE_DEFAULT),
                        help=f"pytest-benchmark's storage folder (default {STORAGE_DEFAULT})")
    parser.add_argument("--no-fail", action="store_true", help="report regressions but exit 0")
    args = parser.parse_args(argv)
    if args.files and len(args.files) != 2:
        parser.error(f"expected two files (OLD.json NEW.json) or none, got {len(args.files)}")
    history: list[Run] | None = None
    if args.files:
        paths = list(args.files)
    else:
        saved = saved_runs(args.storage)
        paths = saved[-2:]
        folder = args.storage / machine_id()
        if not paths:
            print(f"no saved benchmark runs in {folder}: nothing to compare")
            return 0
        if len(paths) == 1:
            print(f"no previous run in {folder} to compare {paths[0].name} with: the next saved run "
                  "is compared with this one")
            return 0
    try:
        old, new = load(paths[0]), load(paths[1])
        if not args.files:
            history = [load(p) for p in saved[-HISTORY - 1:-2]] + [old]
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = compare(old, new, history)
    print(report(old, new, rows))
    if any(r.verdict == "REGRESSION" for r in rows) and not args.no_fail:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
