"""bench/charts.py: the chart `make bench` draws from bench/results.json, on made-up figures."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

sys.path.insert(0, str(BENCH))

import charts  # noqa: E402
import run  # noqa: E402

RESULTS: dict[str, Any] = {
    "date": "2025-01-01 00:00 UTC",
    "quick": True,
    "runs": 1,
    "machine": {"cpus": 2, "load_before": [1.0, 1.0, 1.0], "load_after": [1.5, 1.2, 1.1]},
    "scenarios": [
        {
            "name": "fanout",
            "load": "4×10×8/s",
            "p50": 3.0,
            "p95": 9.0,
            "p99": 15.0,
            "deliveries_per_s": 3100.0,
            "baseline": {"p50": 1.0, "p95": 2.0, "p99": 3.0, "deliveries_per_s": 3200.0},
        },
        # No baseline and no p95: both are left out, not drawn as zero.
        {
            "name": "fanout_notify",
            "load": "notify on",
            "p50": 4.0,
            "p99": 20.0,
            "deliveries_per_s": 1900.0,
            "baseline": None,
        },
        # A latency-only scenario, with a percentile that did not come out (NaN in the file).
        {"name": "longpoll", "load": "1000 waiters", "p50": 80.0, "p95": float("nan"), "p99": 140},
    ],
}


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, "not a PNG file"
    # The first chunk of a PNG is IHDR: length, type, then width and height as big-endian ints.
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def draw_from_file(tmp_path: Path, results: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    source = tmp_path / "results.json"
    source.write_text(json.dumps(results))
    return subprocess.run(
        [sys.executable, str(BENCH / "charts.py"), str(source), "-o", str(tmp_path / "chart.png")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def expected_size() -> tuple[int, int]:
    return (round(charts.SIZE_IN[0] * charts.DPI), round(charts.SIZE_IN[1] * charts.DPI))


def test_it_writes_a_png_of_the_expected_size(tmp_path: Path) -> None:
    done = draw_from_file(tmp_path, RESULTS)

    assert done.returncode == 0, done.stderr
    chart = tmp_path / "chart.png"
    assert chart.exists()
    assert png_size(chart) == expected_size()
    assert chart.stat().st_size > 10_000  # two panels of bars, not an empty canvas


def test_it_prints_missing_figures_as_dashes(tmp_path: Path) -> None:
    done = draw_from_file(tmp_path, RESULTS)

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    notify = next(line for line in lines if line.startswith("| fanout_notify "))
    assert notify == "| fanout_notify | notify on | 4.0 | - | 20.0 | 1,900 | - |"
    longpoll = next(line for line in lines if line.startswith("| longpoll "))
    assert longpoll == "| longpoll | 1000 waiters | 80.0 | - | 140.0 | - | - |"


def test_it_draws_a_run_where_nothing_finished(tmp_path: Path) -> None:
    done = draw_from_file(tmp_path, {"scenarios": []})

    assert done.returncode == 0, done.stderr
    assert png_size(tmp_path / "chart.png") == expected_size()


def test_run_keeps_a_fanout_without_baseline() -> None:
    chat = {"p50": 2.0, "p95": 5.0, "p99": 8.0, "deliveries_per_s": 300.0, "lost": 0}
    data = {"summary": {"1x200x1": {"chat": chat}}}

    (scenario,) = run.scenarios("fanout", data)

    assert scenario["load"] == "1×200×1/s"
    assert scenario["p95"] == 5.0
    assert scenario["deliveries_per_s"] == 300.0
    assert scenario["baseline"] is None


def test_run_reports_each_search_band_by_its_view_times() -> None:
    def one(p50: float, p99: float) -> dict[str, float]:
        return {"view_p50": p50, "view_p95": p50 * 2, "view_p99": p99, "svc_p99": 1.0}

    data = {
        "messages": 1_000_000,
        "search": {
            "typical": [one(10.0, 40.0), one(12.0, 281.0), one(11.0, 42.0)],
            "rare": [{"view_p50": 3.0, "view_p99": 9.0}],  # from before p95 was kept
            "common": [],
        },
    }

    typical, rare = run.scenarios("search", data)

    assert typical["load"] == "typical queries, 1M msgs"
    # The median of the runs: one slow run does not make the figure.
    assert (typical["p50"], typical["p95"], typical["p99"]) == (11.0, 22.0, 42.0)
    assert typical["baseline"] is None and "deliveries_per_s" not in typical
    assert (rare["p50"], rare["p99"]) == (3.0, 9.0) and math.isnan(rare["p95"])


def test_run_reports_two_processes_by_their_shape_and_medians() -> None:
    median = {"p50": 40.0, "p95": 90.0, "p99": 120.0, "deliveries_per_s": 3950.0, "lost": 0}
    data = {"summary": {"processes": 2, "rooms": 4, "clients": 10, "rate": 10.0, "median": median}}

    (scenario,) = run.scenarios("processes", data)

    assert scenario["name"] == "processes"
    assert scenario["load"] == "4×10×10/s, two processes"
    assert (scenario["p50"], scenario["p95"], scenario["p99"]) == (40.0, 90.0, 120.0)
    assert scenario["deliveries_per_s"] == 3950.0
    assert scenario["baseline"] is None


def test_run_draws_nothing_for_processes_that_did_not_finish_a_run() -> None:
    assert run.scenarios("processes", {"budgets": [], "summary": {}}) == []


def test_the_sockets_scenario_is_the_fan_out_with_the_idle_sockets_open() -> None:
    data = {
        "budgets": [],
        "summary": {
            "load": "4x10x10, 10k idle",
            "p50": 5.0,
            "p95": 20.0,
            "p99": 40.0,
            "deliveries_per_s": 3990.0,
            "rss_after_mb": 700.0,
        },
    }
    (scenario,) = run.scenarios("sockets", data)
    assert scenario == {
        "name": "sockets",
        "load": "4x10x10, 10k idle",
        "p50": 5.0,
        "p95": 20.0,
        "p99": 40.0,
        "deliveries_per_s": 3990.0,
        "baseline": None,
    }
    assert run.scenarios("sockets", {"budgets": []}) == []  # it did not finish
