"""`barlowzero plot`: the paper's loss and return curves from Tune's trial files."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import matplotlib.image
import pytest

from rllib_barlowzero.plot import PlotError, load_trials, plot_run, trial_labels

LOSSES = ("total_loss", "value_prefix_loss", "value_loss", "policy_loss", "consistency_loss")


def tune_result(iteration: int, lr: float) -> dict:
    """One `algo.train()` result as Tune writes it to result.json (the keys the plot reads)."""
    losses = {name: 10.0 / (iteration * lr * 100 + 1) for name in LOSSES}
    result = {
        "training_iteration": iteration,
        "training_steps_done": 10 * iteration,
        "time_total_s": 1.5 * iteration,
        "env_runners": {"episode_return_mean": 10.0 + iteration,
                        "num_env_steps_sampled_lifetime": 100 * iteration},
        "learners": {"default_policy": {**losses, "lr": lr * math.cos(iteration / 10)},
                     "__all_modules__": {"num_env_steps_trained": 16}},
        "config": {"lr": lr},
        "trial_id": "abc",
    }
    if iteration % 2 == 0:  # evaluation every other iteration
        result["evaluation"] = {"env_runners": {"episode_return_mean": 20.0 * iteration}}
    return result


def write_trial(experiment: Path, name: str, config: dict, results: list[dict]) -> Path:
    trial = experiment / name
    trial.mkdir(parents=True)
    (trial / "params.json").write_text(json.dumps(config))
    (trial / "result.json").write_text("".join(json.dumps(r) + "\n" for r in results))
    return trial


@pytest.fixture
def sweep(tmp_path) -> Path:
    experiment = tmp_path / "breakout-sweep-lr"
    for i, lr in enumerate((0.1, 0.01)):
        write_trial(experiment, f"BarlowZero_Breakout_0000{i}_lr={lr}",
                    {"lr": lr, "seed": 0, "evaluation_config": {"explore": False}},
                    [tune_result(it, lr) for it in range(1, 9)])
    return experiment


def test_plot_writes_a_png_with_every_panel(sweep, tmp_path):
    out = plot_run(str(sweep), str(tmp_path / "figs" / "sweep.png"))
    pixels = matplotlib.image.imread(out)
    assert pixels.ndim == 3 and pixels.shape[0] > 500 and pixels.shape[1] > 1000
    assert pixels[..., :3].std() > 0.05  # curves, not a blank canvas


def test_default_output_is_in_the_run_directory(sweep):
    assert Path(plot_run(str(sweep))) == sweep / "training_curves.png"
    assert (sweep / "training_curves.png").stat().st_size > 10_000


def test_trials_are_labelled_by_the_config_values_that_differ(sweep):
    trials = load_trials(str(sweep))
    assert sorted(trial_labels(trials)) == ["lr=0.01", "lr=0.1"]
    # result.json keeps every key of every iteration, evaluation results included.
    rows = trials[0].rows
    assert len(rows) == 8
    assert "learners/default_policy/consistency_loss" in rows[0]
    assert sum("evaluation/env_runners/episode_return_mean" in row for row in rows) == 4
    assert not any(key.startswith("config/") for key in rows[0])


def test_one_trial_is_labelled_by_its_name_and_any_x_axis_works(sweep, tmp_path):
    trial = next(sweep.iterdir())
    assert trial_labels(load_trials(str(trial))) == [trial.name]
    for x in ("env_steps", "iteration", "time"):
        assert Path(plot_run(str(trial), str(tmp_path / f"{x}.png"), x=x)).is_file()


def test_progress_csv_is_read_when_there_is_no_result_json(tmp_path):
    trial = tmp_path / "run" / "trial"
    trial.mkdir(parents=True)
    rows = [{"training_iteration": i, "training_steps_done": 10 * i,
             "learners/default_policy/total_loss": 5.0 / i,
             "learners/default_policy/lr": 0.01} for i in range(1, 5)]
    with open(trial / "progress.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (trial_data,) = load_trials(str(tmp_path / "run"))
    assert trial_data.rows[-1]["learners/default_policy/total_loss"] == pytest.approx(1.25)
    out = plot_run(str(tmp_path / "run"), str(tmp_path / "csv.png"))
    assert matplotlib.image.imread(out)[..., :3].std() > 0.05


def test_nothing_to_plot_is_a_plot_error(tmp_path):
    with pytest.raises(PlotError, match="no such run directory"):
        plot_run(str(tmp_path / "missing"))
    with pytest.raises(PlotError, match="no trial results"):
        plot_run(str(tmp_path))
    write_trial(tmp_path / "exp", "t", {}, [{"training_iteration": 1, "foo": 1.0}])
    with pytest.raises(PlotError, match="no losses or returns"):
        plot_run(str(tmp_path / "exp"))
    with pytest.raises(PlotError, match="unknown x axis"):
        plot_run(str(tmp_path / "exp"), x="wall")
