"""benchmarks.compare on hand-made runs in pytest-benchmark's saved format: a regression
beyond the noise fails, a change within it does not, a missing previous run is said in
one line, benchmarks in one run only are new or gone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.compare import machine_id, main

ENGINE = "benchmarks/test_engine.py::test_engine[mixed-matching]"
CODEC = "benchmarks/test_codec.py::test_encode_reports"


def bench(fullname: str, median_s: float, iqr_s: float, rounds: int = 5) -> dict[str, Any]:
    """One benchmark as pytest-benchmark saves it (the fields compare reads, and some
    it does not)."""
    name = fullname.split("::")[1]
    return {
        "group": None, "name": name, "fullname": fullname, "params": None, "param": None, "extra_info": {},
        "options": {"timer": "perf_counter", "warmup": False},
        "stats": {"min": median_s - iqr_s, "max": median_s + iqr_s, "mean": median_s, "stddev": iqr_s,
                  "rounds": rounds, "median": median_s, "iqr": iqr_s, "q1": median_s - iqr_s / 2,
                  "q3": median_s + iqr_s / 2, "iqr_outliers": 0, "stddev_outliers": 0, "outliers": "0;0",
                  "ld15iqr": median_s - iqr_s, "hd15iqr": median_s + iqr_s, "ops": 1 / median_s,
                  "total": median_s * rounds, "iterations": 1},
    }


def save(storage: Path, number: int, benches: list[dict[str, Any]], build: str = "compiled") -> Path:
    folder = storage / machine_id()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{number:04d}_0123456789abcdef_20260101_00000{number}.json"
    path.write_text(json.dumps({
        "machine_info": {"node": "vm", "python_version": "3.11.7", "cpu": {"brand_raw": "Xeon"}, "etx_build": build,
                         "load_average_at_start": [1.0, 1.0, 1.0]},
        "commit_info": {"id": "0123456789abcdef", "dirty": False},
        "benchmarks": benches,
        "datetime": f"2026-01-01T00:00:0{number}+00:00",
        "version": "5.3.1",
    }))
    return path


def run(storage: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["--storage", str(storage), *args])
    return code, capsys.readouterr().out


def line_of(out: str, name: str) -> str:
    (line,) = [x for x in out.splitlines() if x.startswith(name.removeprefix("benchmarks/"))]
    return line


def test_a_clear_regression_is_flagged_and_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Three earlier runs agree (no drift between runs): the fourth is judged against them.
    for n in (1, 2, 3):
        save(tmp_path, n, [bench(ENGINE, 0.100, 0.002), bench(CODEC, 0.010, 0.0002)])
    save(tmp_path, 4, [bench(ENGINE, 0.130, 0.002), bench(CODEC, 0.010, 0.0002)])
    code, out = run(tmp_path, capsys)
    assert code == 1
    assert line_of(out, ENGINE).endswith("REGRESSION")
    assert "1.300" in line_of(out, ENGINE)
    assert line_of(out, CODEC).endswith("within noise")
    assert "slower beyond the noise: test_engine.py::test_engine[mixed-matching]" in out
    assert "median ratio of the 2 judged: 1.150" in out
    code, again = run(tmp_path, capsys, "--no-fail")
    assert code == 0 and "REGRESSION" in again


def test_a_change_within_the_noise_is_not_a_regression(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 20 % slower, but the old run's rounds spread over 15 % of its median: the margin
    # is 2 x 15 % = 30 %.
    save(tmp_path, 1, [bench(ENGINE, 0.100, 0.015)])
    save(tmp_path, 2, [bench(ENGINE, 0.120, 0.002)])
    code, out = run(tmp_path, capsys)
    assert code == 0
    assert line_of(out, ENGINE).endswith("within noise")
    assert "30.0%" in line_of(out, ENGINE)


def test_the_margin_is_at_least_five_percent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # No spread at all: 4 % slower is within the 5 % floor, 6 % is not.
    for n in (1, 2, 3):
        save(tmp_path, n, [bench(ENGINE, 0.100, 0.0), bench(CODEC, 0.100, 0.0)])
    save(tmp_path, 4, [bench(ENGINE, 0.104, 0.0), bench(CODEC, 0.106, 0.0)])
    code, out = run(tmp_path, capsys)
    assert code == 1
    assert line_of(out, ENGINE).endswith("within noise")
    assert line_of(out, CODEC).endswith("REGRESSION")


def test_the_drift_between_earlier_runs_widens_the_margin(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    # Each run's rounds agree closely, but the same code ran at 0.100 and 0.130 before:
    # a run at 0.125 is within the noise measured between runs (30 %), compared with the
    # median of the earlier medians.
    save(tmp_path, 1, [bench(ENGINE, 0.100, 0.001)])
    save(tmp_path, 2, [bench(ENGINE, 0.130, 0.001)])
    save(tmp_path, 3, [bench(ENGINE, 0.100, 0.001)])
    save(tmp_path, 4, [bench(ENGINE, 0.125, 0.001)])
    code, out = run(tmp_path, capsys)
    assert code == 0 and line_of(out, ENGINE).endswith("within noise"), out
    assert "30.0%" in line_of(out, ENGINE)
    save(tmp_path, 5, [bench(ENGINE, 0.150, 0.001)])  # beyond it (0.150 / the median 0.1125 = 1.33)
    code, out = run(tmp_path, capsys)
    assert code == 1 and line_of(out, ENGINE).endswith("REGRESSION"), out


def test_before_the_drift_is_known_a_slowdown_is_a_candidate(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    # One earlier run only: how much runs drift is not measured yet, so a slowdown beyond
    # the within-run noise is named, and ./dev bench does not fail on it.
    save(tmp_path, 1, [bench(ENGINE, 0.100, 0.001)])
    save(tmp_path, 2, [bench(ENGINE, 0.130, 0.001)])
    code, out = run(tmp_path, capsys)
    assert code == 0 and line_of(out, ENGINE).endswith("candidate"), out
    assert "run ./dev bench again to judge: test_engine.py::test_engine[mixed-matching]" in out


def test_a_slowdown_of_the_whole_machine_is_divided_out(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    # Six benchmarks all 12 % slower (the machine), one of them 40 % slower (the code).
    names = [f"benchmarks/test_engine.py::test_engine[b{i}]" for i in range(6)]
    for n in (1, 2, 3):
        save(tmp_path, n, [bench(name, 0.100, 0.001) for name in names])
    save(tmp_path, 4, [bench(name, 0.112, 0.001) for name in names[:5]] + [bench(names[5], 0.140, 0.001)])
    code, out = run(tmp_path, capsys)
    assert code == 1 and "slower beyond the noise: test_engine.py::test_engine[b5]" in out, out
    assert all(line_of(out, name).endswith("within noise") for name in names[:5]), out


def test_faster_is_reported_and_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save(tmp_path, 1, [bench(ENGINE, 0.100, 0.001)])
    save(tmp_path, 2, [bench(ENGINE, 0.070, 0.001)])
    code, out = run(tmp_path, capsys)
    assert code == 0 and line_of(out, ENGINE).endswith("faster")


def test_one_round_is_not_judged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gateway = "benchmarks/test_gateway.py::test_gateway_throughput_and_latency[snapshots]"
    save(tmp_path, 1, [bench(gateway, 10.0, 0.0, rounds=1)])
    save(tmp_path, 2, [bench(gateway, 20.0, 0.0, rounds=1)])
    code, out = run(tmp_path, capsys)
    assert code == 0 and line_of(out, gateway).endswith("not judged")


def test_no_previous_run_is_said_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(tmp_path, capsys)
    assert code == 0 and out.startswith("no saved benchmark runs in ")
    only = save(tmp_path, 1, [bench(ENGINE, 0.1, 0.001)])
    code, out = run(tmp_path, capsys)
    assert code == 0
    assert out.startswith(f"no previous run in {tmp_path / machine_id()} to compare {only.name} with")
    assert len(out.splitlines()) == 1


def test_benchmarks_in_one_run_only_are_new_or_gone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save(tmp_path, 1, [bench(ENGINE, 0.1, 0.001)])
    save(tmp_path, 2, [bench(CODEC, 0.01, 0.0001)])
    code, out = run(tmp_path, capsys)
    assert code == 0
    assert line_of(out, CODEC).endswith("new")
    assert line_of(out, ENGINE).endswith("gone")
    assert "1 new, 1 gone (of 2)" in out


def test_the_two_newest_runs_are_compared(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save(tmp_path, 1, [bench(ENGINE, 0.050, 0.0)])  # the oldest: far faster, not compared
    second = save(tmp_path, 2, [bench(ENGINE, 0.100, 0.0)])
    third = save(tmp_path, 3, [bench(ENGINE, 0.101, 0.0)])
    code, out = run(tmp_path, capsys)
    assert code == 0
    assert out.splitlines()[0].startswith(f"old: {second.name}")
    assert out.splitlines()[1].startswith(f"new: {third.name}")


def test_two_files_named_and_a_different_build_noted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = save(tmp_path, 1, [bench(ENGINE, 0.100, 0.0)])
    new = save(tmp_path, 2, [bench(ENGINE, 0.150, 0.0)], build="interpreted")
    save(tmp_path, 3, [bench(ENGINE, 0.100, 0.0)])  # newer, but not named
    code, out = run(tmp_path, capsys, str(old), str(new))
    assert code == 1
    assert "note: the runs differ, build: compiled -> interpreted" in out


def test_a_file_that_is_not_a_run_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = save(tmp_path, 1, [bench(ENGINE, 0.100, 0.0)])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"benchmarks": [{"name": "x"}]}))
    assert main([str(old), str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: expected a pytest-benchmark run" in err and "KeyError" in err
