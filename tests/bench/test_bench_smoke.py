"""The benchmark harness: its accounting, and a smoke run through both gateways (no timings)."""

from __future__ import annotations

import collections
import importlib
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _module(name: str) -> ModuleType:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


@pytest.mark.parametrize(
    ("arrived", "lost", "duplicated"),
    [
        (["a", "b", "c"], 0, 0),
        (["a", "c"], 1, 0),
        (["a", "b", "b", "c", "c", "c"], 0, 3),
        (["b", "b", "x"], 2, 1),
        ([], 3, 0),
    ],
)
def test_account_counts_lost_and_duplicated_by_message_id(
    arrived: list[str], lost: int, duplicated: int
) -> None:
    """Lost is what never arrived, duplicated every extra copy; strangers are not counted."""
    load = _module("_load")
    acc = load.account(["a", "b", "c"], collections.Counter(arrived))
    assert (acc.lost, acc.duplicated) == (lost, duplicated)
    assert acc.ok is (lost == 0 and duplicated == 0)


def test_percentile_and_steady_rate_read_the_samples() -> None:
    """Nearest-rank percentiles, and the rate over the middle of evenly spaced arrivals."""
    load = _module("_load")
    values = [float(v) for v in range(1, 101)]
    assert [load.percentile(values, q) for q in (50, 95, 99, 100)] == [50.0, 95.0, 99.0, 100.0]
    arrivals = [i / 250 for i in range(1000)]
    assert load.steady_rate(arrivals) == pytest.approx(250, rel=1e-6)


@pytest.mark.parametrize("loads", ["0", "fast", ""])
def test_bad_loads_are_a_usage_error(loads: str) -> None:
    """An offered load that is not a positive rate or 'max' exits with status 2."""
    run = _module("run")
    with pytest.raises(SystemExit) as exc:
        run.parse_args(["--loads", loads])
    assert exc.value.code == 2


def test_smoke_run_delivers_every_message_exactly_once(rabbitmq: str, tmp_path: Path) -> None:
    """A few hundred messages from XA's back office all reach XB's, once each, each reported delivered."""
    out = tmp_path / "smoke.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--smoke", "--out", str(out), "--no-chart"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["ok"] is True
    (step,) = doc["steps"]
    n = doc["settings"]["messages_per_step"]
    assert n >= 100
    assert step["mode"] == "e2e-batched"
    assert (step["sent"], step["received"], step["unique"]) == (n, n, n)
    assert (step["lost"], step["duplicated"], step["stalled"]) == (0, 0, False)
    assert step["events"] == {"delivered": n}
    assert step["cpu_s"]["A"] > 0 and step["cpu_s"]["B"] > 0
    assert step["rss_peak_mb"]["A"] > 0 and step["rss_peak_mb"]["B"] > 0
