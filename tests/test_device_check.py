"""benchmarks/device_check.py --cpu-smoke: every stage runs and writes its figures.

The smoke is the GPU check's code path with a tiny network on the CPU; here it must finish, write
`device_check.json` with every figure, and print the projected wall time of breakout.yaml.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks/device_check.py"
ROOTS = ("1", "8", "64")
WORKERS = ("0", "1", "2")


def positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path_factory.mktemp("device_check")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("OUT", None)
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu-smoke", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    path = out / "device_check.json"
    assert path.is_file(), result.stdout[-4000:]
    return result, json.loads(path.read_text())


@pytest.mark.slow
def test_smoke_runs_every_stage_without_errors(smoke):
    result, figures = smoke
    assert figures["errors"] == {}, figures["errors"]
    assert figures["mode"] == "cpu-smoke" and figures["device"] == "cpu"
    assert figures["mixed_precision"] is False
    assert figures["torch_version"] and figures["ray_version"]
    assert figures["config"]["num_simulations"] == 4 and figures["config"]["batch_size"] == 16
    assert figures["config"]["env"] == "BreakoutNoFrameskip-v4"
    assert positive(figures["wall_s"])


@pytest.mark.slow
def test_model_floors_are_within_the_search(smoke):
    _, figures = smoke
    floors = figures["model_floors"]
    assert set(floors) == set(ROOTS)
    for roots in ROOTS:
        row = floors[roots]
        for key in ("model_calls_s", "search_s", "model_calls_alone_s"):
            assert positive(row[key]), (roots, key, row)
        # The search makes these very calls: their time is part of it.
        assert row["model_calls_s"] <= row["search_s"], (roots, row)
        assert row["search_overhead_s"] >= 0.0
        assert row["model_calls_per_search"] == 1 + figures["config"]["num_simulations"]
    assert positive(figures["learner_update_s"])
    assert figures["learner_update_batch_size"] == 16


@pytest.mark.slow
def test_self_play_reanalyze_learner_and_projection(smoke):
    result, figures = smoke
    assert positive(figures["self_play"]["env_steps_per_s"])
    assert figures["self_play"]["env_steps"] > 0
    assert set(figures["reanalyze"]) == set(WORKERS)
    for workers in WORKERS:
        row = figures["reanalyze"][workers]
        assert positive(row["batches_per_s"]) and positive(row["learner_steps_per_s"]), row
        assert 0.0 <= row["learner_idle_share"] <= 1.0, row
        assert row["updates"] >= 1
    learner = figures["learner"]
    assert positive(learner["steps_per_s"])
    assert str(learner["best_num_reanalyze_workers"]) in WORKERS
    projected = figures["projected"]
    assert projected["total_env_steps"] == 100_000 and projected["training_steps"] == 120_000
    for key in ("self_play_h", "learner_h", "total_h"):
        assert positive(projected[key]), projected
    assert math.isclose(projected["total_h"], projected["self_play_h"] + projected["learner_h"])
    assert any("projected" in line for line in result.stdout.splitlines())
