"""The step bench (bench/step_bench.py) runs its whole path on the CPU at the tiny shape: the
transformer's steps alone and guarded, a real sidecar process in Enforce mode, the read-only
baseline, the JSON and its summary; and the "fill" shape's size follows the GPU's free memory."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from bench.step_bench import FILL_FRACTION, SHAPES, SIDECAR_HEADROOM, fill_shape

from e2e.cluster.harness import ROOT


def test_the_tiny_shape_runs_guarded_with_no_false_alarm(tmp_path: Path) -> None:
    # This checkout's code, in the bench and in the sidecar it starts (not an installed copy).
    env = {**os.environ, "OUT": str(tmp_path), "PYTHONPATH": f"{ROOT / 'operator'}{os.pathsep}{ROOT}"}
    result = subprocess.run(
        [sys.executable, "-m", "bench.step_bench", "--shape", "tiny", "--steps", "3", "--warmup", "1"],
        capture_output=True, text=True, timeout=240, check=False, cwd=ROOT, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads((tmp_path / "step_tiny.json").read_text())
    assert report["false_alarms"] == 0
    assert report["violations"] == []
    assert report["device"] == "cpu"
    assert report["timed_steps"] == 3
    # Every guarded step after the first was compared with the end of the one before.
    assert report["verified_steps"] >= 3
    assert report["guarded_state_bytes"] == sum(report["regions"].values())
    # Parameters and AdamW's moments: at least three bf16 copies of the parameters.
    assert report["guarded_state_bytes"] >= 3 * 2 * report["params"]
    for phase in ("step_ms_alone", "step_ms_guarded"):
        assert set(report[phase]) == {"median", "mean", "min", "max"}
        assert report[phase]["median"] > 0
    assert report["read_only"]["gb_per_second"] > 0
    assert math.isclose(
        report["two_reads_ms"],
        2 * report["guarded_state_bytes"] / (report["read_only"]["gb_per_second"] * 1e9) * 1000,
    )
    added = report["added_ms_per_step"]["median"]
    assert math.isclose(report["ratio_added_to_two_reads"], added / report["two_reads_ms"])
    assert report["target_ratio"] == 1.5
    parts = report["breakdown_ms_median"]
    assert parts["guard_begin_call"] > 0
    assert parts["guard_end_call"] > 0
    assert parts["sidecar_fingerprint_at_end"] > 0
    assert f"step bench tiny ({report['params'] / 1e6:.2f}M params" in result.stdout
    assert "no false alarm" in result.stdout


def test_the_fill_shape_grows_with_free_memory_within_its_budget() -> None:
    h100, h200 = fill_shape(79 * 2**30), fill_shape(139 * 2**30)
    assert 2.5e9 < h100.params < 3.5e9  # the 3.2B class on an 80 GB H100
    assert h100.params < h200.params
    for free, shape in ((79 * 2**30, h100), (139 * 2**30, h200)):
        assert shape.peak_bytes() <= FILL_FRACTION * free - SIDECAR_HEADROOM
    assert 395e6 < SHAPES["403m"].params < 410e6
