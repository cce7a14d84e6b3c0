"""The progress table of `rllib train file` (`cli.ProgressTable`), driven with Tune trials whose
results have the shape of BarlowZero's (copied from a tiny CartPole run, trimmed)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ray.tune.experiment import Trial

from rllib_barlowzero.cli import PROGRESS_COLUMNS, ProgressTable, format_cell, result_value

HEADERS = ["iter", "env steps", "train steps", "return", "eval return", "total loss",
           "env steps/s", "learner idle"]

# Iteration 1: learning has not started (no learner results, no idle share).
FIRST = {
    "training_iteration": 1, "num_env_steps_sampled_lifetime": 100.0,
    "training_steps_done": 0.0, "env_steps_per_s": 139.94600877411665,
    "env_runners": {"episode_return_mean": 15.75, "num_env_steps_sampled_lifetime": 100.0},
    "evaluation": {"env_runners": {"episode_return_mean": 25.0}},
    "replay_buffer": {"num_steps": 63.0}, "time_total_s": 1.79,
}
# Iteration 2: learning, evaluation.
SECOND = {
    "training_iteration": 2, "num_env_steps_sampled_lifetime": 202.0,
    "training_steps_done": 10.0, "env_steps_per_s": 82.81067867383278,
    "learner_idle_share": 0.01545319548575275,
    "env_runners": {"episode_return_mean": 15.666666666666666},
    "evaluation": {"env_runners": {"episode_return_mean": 18.0}},
    "learners": {"default_policy": {"total_loss": 54.6430477142334, "policy_loss": 3.47},
                 "__all_modules__": {"num_env_steps_trained": 160}},
    "time_total_s": 5.69,
}


def trial(result: dict | None = None, status: str = Trial.RUNNING, **params) -> Trial:
    t = Trial("BarlowZero", stub=True, evaluated_params=params)
    if result is not None:
        t.update_last_result(result)
    t.set_status(status)
    return t


def table(text: str) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows ({header: cell}) of the (last) table in `text`."""
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True))
            for line in lines[1:]]
    return header, rows


def test_the_table_carries_the_classic_columns():
    text = ProgressTable().format([trial(SECOND)], False, "Logical resource usage: 1.0/2 CPUs")
    assert "Logical resource usage: 1.0/2 CPUs" in text
    header, (row,) = table(text)
    assert header == ["trial", "status", *HEADERS]
    assert row["status"] == "RUNNING" and row["trial"].startswith("BarlowZero_")
    assert row["iter"] == "2" and row["env steps"] == "202" and row["train steps"] == "10"
    assert row["return"] == "15.7" and row["eval return"] == "18.0"
    assert row["total loss"] == "54.64"
    assert row["env steps/s"] == "82.8" and row["learner idle"] == "2%"


def test_metrics_missing_from_a_result_leave_blank_cells():
    trials = [trial(FIRST), trial(status=Trial.PENDING), trial({"training_iteration": 3})]
    header, rows = table(ProgressTable().format(trials))
    assert header == ["trial", "status", *HEADERS]  # every column, even with no value at all
    first = next(r for r in rows if r["iter"] == "1")
    assert first["return"] == "15.8" and first["eval return"] == "25.0"
    assert first["total loss"] == "" and first["learner idle"] == ""
    pending = next(r for r in rows if r["status"] == "PENDING")
    assert all(pending[h] == "" for h in HEADERS)
    bare = next(r for r in rows if r["iter"] == "3")
    assert all(bare[h] == "" for h in HEADERS if h != "iter")


def test_cells_of_odd_values():
    assert format_cell(float("nan"), ".1f") == "nan"
    assert format_cell(math.inf, ".4g") == "inf"
    assert format_cell(None, ".1f") == format_cell("n/a", ".1f") == format_cell(True, "d") == ""
    assert format_cell(12345678.0, "d") == "12345678"
    assert format_cell(np.float32(0.25), ".0%") == "25%" and format_cell(np.int64(7), "d") == "7"
    assert result_value(SECOND, "learners/default_policy/total_loss") == pytest.approx(54.643, 1e-4)
    assert result_value({"evaluation/env_runners/episode_return_mean": 3.0},
                        "evaluation/env_runners/episode_return_mean") == 3.0
    assert result_value(FIRST, "learners/default_policy/total_loss") is None
    assert set(PROGRESS_COLUMNS) >= {"env_runners/episode_return_mean",
                                     "evaluation/env_runners/episode_return_mean"}


def test_searched_parameters_get_columns_and_errors_a_line():
    trials = [trial(SECOND, lr=0.01), trial(FIRST, status=Trial.ERROR, lr=0.05)]
    text = ProgressTable().format(trials, True)
    header, rows = table(text)
    assert header[:3] == ["trial", "status", "lr"]
    assert [(r["status"], r["lr"]) for r in rows] == [("RUNNING", "0.01"), ("ERROR", "0.05")]
    assert "Trials: 2 (1 ERROR, 1 RUNNING)" in text


def test_reports_when_trials_change_at_most_every_min_interval(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr("rllib_barlowzero.cli.time.time", lambda: now[0])
    reporter = ProgressTable(min_interval_s=10, max_interval_s=300)
    running = trial(FIRST)
    assert reporter.should_report([running])  # the first one
    reporter.report([running], False)
    now[0] += 20
    assert not reporter.should_report([running])  # nothing new
    running.update_last_result(SECOND)
    now[0] += -15
    assert not reporter.should_report([running])  # new, but too soon
    now[0] += 10
    assert reporter.should_report([running])
    reporter.report([running], False)
    now[0] += 301
    assert reporter.should_report([running])  # a heartbeat, even without news
    assert reporter.should_report([running], done=True)
