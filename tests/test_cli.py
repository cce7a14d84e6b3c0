"""The `rllib` / `barlowzero` command, run as a user runs it: real subprocesses, tiny CartPole runs.

One trained run (2 iterations, a checkpoint each) is shared by the train, evaluate, TensorBoard
and resume tests; a 2-value grid search by the sweep and plot tests.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rllib_barlowzero.cli import main
from rllib_barlowzero.experiments import (
    UserError,
    config_variants,
    load_experiments,
    make_experiment,
    to_tune_search_spaces,
)

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
RLLIB = str(Path(sys.executable).with_name("rllib"))
BARLOWZERO = str(Path(sys.executable).with_name("barlowzero"))
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
LOSS_TAGS = [
    f"learners/default_policy/{name}"
    for name in ("total_loss", "value_loss", "value_prefix_loss", "policy_loss",
                 "consistency_loss", "lr")
]


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def results_of(trial_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]


def trial_dirs(experiment_dir: Path) -> list[Path]:
    return sorted(p.parent for p in experiment_dir.glob("*/params.json"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """`rllib train file tests/data/tiny.yaml`: the experiment directory."""
    storage = tmp_path_factory.mktemp("runs")
    done = run(RLLIB, "train", "file", "tests/data/tiny.yaml", "--storage-path", str(storage))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tiny-cartpole: 1 trial(s)" in done.stdout
    (storage / "stdout.txt").write_text(done.stdout)
    return storage / "tiny-cartpole"


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Path:
    """`rllib train file tests/data/grid.yaml` (lr grid_search [0.01, 0.05])."""
    storage = tmp_path_factory.mktemp("grid")
    done = run(RLLIB, "train", "file", "tests/data/grid.yaml", "--storage-path", str(storage))
    assert done.returncode == 0, done.stderr[-3000:]
    return storage / "tiny-grid"


# -- train ----------------------------------------------------------------------------------------


def test_train_reports_checkpoints_and_evaluates(trained):
    (trial,) = trial_dirs(trained)
    results = results_of(trial)
    assert [r["training_iteration"] for r in results] == [1, 2]
    assert results[-1]["done"] is True
    assert results[-1]["training_steps_done"] > 0
    assert np.isfinite(results[-1]["learners"]["default_policy"]["total_loss"])
    assert results[-1]["evaluation"]["env_runners"]["num_episodes"] >= 2
    # checkpoint_frequency 1 (and at end): one checkpoint per iteration.
    for name in ("checkpoint_000000", "checkpoint_000001"):
        assert (trial / name / "rllib_checkpoint.json").is_file()
        assert (trial / name / "class_and_ctor_args.pkl").is_file()


def last_table(text: str) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows ({header: cell}) of the last progress table printed in `text`."""
    start = text.rindex("== Status ==")
    lines = [line for line in text[start:].splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True))
            for line in lines[1:]]
    return header, rows


def test_train_prints_the_progress_table_of_the_classic_cli(trained):
    (trial,) = trial_dirs(trained)
    last = results_of(trial)[-1]
    header, (row,) = last_table((trained.parent / "stdout.txt").read_text())
    assert header == ["trial", "status", "iter", "env steps", "train steps", "return",
                      "eval return", "total loss", "env steps/s", "learner idle"]
    assert row["status"] == "TERMINATED" and row["iter"] == "2"
    assert row["env steps"] == str(round(last["num_env_steps_sampled_lifetime"]))
    assert row["train steps"] == str(round(last["training_steps_done"]))
    assert row["return"] == f"{last['env_runners']['episode_return_mean']:.1f}"
    evaluation = last["evaluation"]["env_runners"]["episode_return_mean"]
    assert row["eval return"] == f"{evaluation:.1f}"
    assert row["total loss"] == f"{last['learners']['default_policy']['total_loss']:.4g}"
    assert row["env steps/s"] == f"{last['env_steps_per_s']:.1f}"
    assert row["learner idle"] == f"{last['learner_idle_share']:.0%}"


def test_progress_table_of_the_real_results(trained):
    """Each real result through the reporter: iteration 1 (no learning yet) leaves blanks."""
    from ray.tune.experiment import Trial

    from rllib_barlowzero.cli import ProgressTable

    (trial_dir,) = trial_dirs(trained)
    first, second = results_of(trial_dir)
    trial = Trial("BarlowZero", stub=True)
    trial.set_status(Trial.RUNNING)
    trial.update_last_result(first)
    _, (row,) = last_table(ProgressTable().format([trial]))
    assert row["iter"] == "1" and row["train steps"] == "0"
    assert row["return"] == f"{first['env_runners']['episode_return_mean']:.1f}"
    assert row["total loss"] == "" and row["learner idle"] == ""
    trial.update_last_result(second)
    _, (row,) = last_table(ProgressTable().format([trial]))
    assert row["iter"] == "2" and row["total loss"] != "" and row["learner idle"] != ""


def test_train_writes_loss_tags_to_tensorboard_once(trained):
    (trial,) = trial_dirs(trained)
    # Tune's logger wrote the events; the TensorBoard callback did not write a second file.
    (events,) = trial.glob("events.out.tfevents.*")
    scalars = EventAccumulator(str(events), size_guidance={"scalars": 0})
    scalars.Reload()
    tags = scalars.Tags()["scalars"]
    for tag in [*LOSS_TAGS, "evaluation/env_runners/episode_return_mean",
                "env_runners/episode_return_mean", "search/visit_entropy_mean"]:
        assert tag in tags, tag
    assert not any(tag.startswith("ray/tune/") for tag in tags)
    steps = [event.step for event in scalars.Scalars("training_steps_done")]
    assert steps == [1, 2]


def test_grid_search_runs_one_trial_per_value(grid):
    trials = trial_dirs(grid)
    assert len(trials) == 2
    lrs = sorted(json.loads((t / "params.json").read_text())["lr"] for t in trials)
    assert lrs == [0.01, 0.05]
    for trial in trials:
        assert results_of(trial)[-1]["training_iteration"] == 2
        # The learner used the trial's learning rate (cosine-annealed a little already).
        lr = json.loads((trial / "params.json").read_text())["lr"]
        learner = results_of(trial)[-1]["learners"]["default_policy"]
        assert learner["lr"] == pytest.approx(lr, rel=1e-2)


def test_resume_with_a_larger_stop_continues_from_the_checkpoint(trained, tmp_path):
    storage = tmp_path / "runs"
    shutil.copytree(trained, storage / "tiny-cartpole")
    done = run(RLLIB, "train", "file", "tests/data/tiny.yaml", "--storage-path", str(storage),
               "--resume", "--stop", '{"training_iteration": 4}')
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Resuming" in done.stdout
    (trial,) = trial_dirs(storage / "tiny-cartpole")
    results = results_of(trial)
    assert [r["training_iteration"] for r in results] == [1, 2, 3, 4]
    before, after = results[1], results[2]
    # Restored from checkpoint_000001 (iteration 2): counters go on, nothing starts over.
    assert after["iterations_since_restore"] == 1
    assert after["training_steps_done"] > before["training_steps_done"]
    sampled = "num_env_steps_sampled_lifetime"
    assert after[sampled] > before[sampled]
    assert (trial / "checkpoint_000003").is_dir()


@pytest.mark.slow
def test_interrupted_experiment_resumes_from_its_last_checkpoint(tmp_path):
    storage = tmp_path / "runs"
    args = [RLLIB, "train", "file", "tests/data/tiny.yaml", "--storage-path", str(storage)]
    process = subprocess.Popen([*args, "--stop", '{"training_iteration": 5}'], cwd=REPO,
                               env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not list(storage.glob("tiny-cartpole/*/checkpoint_000001")):
        assert process.poll() is None and time.monotonic() < deadline, "no checkpoint came"
        time.sleep(0.5)
    process.send_signal(signal.SIGINT)  # Ctrl-C: Tune saves the experiment state and stops
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert "continue them with:" in stderr and "--resume" in stderr
    (trial,) = trial_dirs(storage / "tiny-cartpole")
    interrupted_at = results_of(trial)[-1]["training_iteration"]
    assert interrupted_at < 5

    done = run(*args, "--stop", '{"training_iteration": 5}', "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    results = results_of(trial)
    assert results[-1]["training_iteration"] == 5
    # The first result after the restore follows a checkpoint (iteration >= 2), not iteration 1.
    restored = next(r for r in results[1:] if r["iterations_since_restore"] == 1)
    assert restored["training_iteration"] >= 3


# -- evaluate and plot ----------------------------------------------------------------------------


def test_evaluate_prints_table_1_and_writes_json(trained, tmp_path):
    (trial,) = trial_dirs(trained)
    out = tmp_path / "scores.json"
    done = run(RLLIB, "evaluate", str(trial / "checkpoint_000001"), "--episodes", "2",
               "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    for row in ("max", "mean", "median", "min", "std"):
        assert any(line.split()[:1] == [row] for line in done.stdout.splitlines()), row
    # CartPole-v1's time limit (500) is far away: no game was cut.
    assert "games cut at the move cap: 0 of 2 (0%)" in done.stdout
    assert "games [" not in done.stderr  # the progress bar is for terminals only
    report = json.loads(out.read_text())
    assert report["env"] == "CartPole-v1" and report["episodes"] == 2
    assert len(report["scores"]) == 2 and len(report["lengths"]) == 2
    assert report["score"]["max"] == max(report["scores"])
    assert report["score"]["min"] == min(report["scores"])
    assert report["score"]["mean"] == pytest.approx(np.mean(report["scores"]))
    # CartPole pays 1 per step: whole games, raw rewards.
    assert report["scores"] == [float(n) for n in report["lengths"]]


def test_plot_overlays_the_trials_of_a_sweep(grid, tmp_path):
    figure = tmp_path / "sweep.png"
    done = run(BARLOWZERO, "plot", str(grid), "-o", str(figure))
    assert done.returncode == 0, done.stderr[-3000:]
    import matplotlib.image

    pixels = matplotlib.image.imread(figure)
    assert pixels.shape[0] > 500 and pixels.shape[1] > 500
    assert pixels[..., :3].std() > 0.05  # not blank


# -- mistakes a user makes: one line on stderr, a non-zero exit -----------------------------------


@pytest.mark.parametrize(
    ("yaml_file", "expected"),
    [
        ("malformed.yaml", ["malformed.yaml:7", "malformed YAML", "line 6"]),
        ("unknown_key.yaml", ["unknown config key 'consistency_los'",
                              "did you mean 'consistency_loss'"]),
    ],
)
def test_yaml_mistakes_give_one_line_and_exit_2(yaml_file, expected):
    done = run(RLLIB, "train", "file", f"tests/data/{yaml_file}")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for text in expected:
        assert text in lines[0]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train", "file", "tests/data/missing.yaml"], "missing.yaml: no such file"),
        (["train", "file", "tests/data"], "tests/data: is a directory; give one YAML experiment"),
        (["train", "file", "tests/data/tiny.yaml", "--config", '{"env": "Pendulum-v1"}'],
         "env 'Pendulum-v1' has actions Box(-2.0, 2.0, (1,), float32); BarlowZero's search "
         "needs a Discrete action space"),
        (["train", "file", "tests/data/no_run.yaml"], "has no 'run'"),
        (["train", "file", "tests/data/unknown_run.yaml"],
         "unknown algorithm run: BarlowZer0 (did you mean 'BarlowZero'?); known: BarlowZero, "),
        (["train", "file", "tests/data/bad_value.yaml"], "`lr`=-0.1 is invalid"),
        (["train", "file", "tests/data/tiny.yaml", "--config", "{lr: 1}"],
         "--config is not valid JSON"),
        (["train", "file", "tests/data/tiny.yaml", "--config", '{"num_simulatons": 4}'],
         "did you mean 'num_simulations'"),
        (["train", "file", "tests/data/tiny.yaml", "--config", '{"env": "CartPol-v1"}'],
         "unknown env 'CartPol-v1' (did you mean 'CartPole-v1'?)"),
        (["train", "file", "tests/data/tiny.yaml", "--experiment", "tiny"],
         "has no experiment 'tiny'"),
        (["train", "file", "tests/data/tiny.yaml", "--config",
          '{"env": "BreakoutNoFrameskip-v4", "env_config": {"frame_sise": 84}}'],
         "unknown Atari env_config key 'frame_sise' (did you mean 'frame_size'?)"),
        (["train", "file", "tests/data/tiny.yaml", "--stop", '{"training_iteration": "5"}'],
         "stop training_iteration: expected a number"),
        (["evaluate", "does/not/exist"], "does/not/exist: no such checkpoint directory"),
        (["evaluate", "tests/data"], "is not a BarlowZero checkpoint"),
        (["evaluate", "tests/data", "--video", "game.avi"], "use a .gif or .mp4"),
        (["plot", "tests/data"], "no trial results"),
    ],
)
def test_mistakes_give_one_clear_line(argv, expected, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err


def test_a_stop_key_that_is_no_result_key_is_warned_about(capsys):
    experiment = make_experiment("x", {"run": "BarlowZero", "env": "CartPole-v1",
                                       "stop": {"training_iteraton": 5,
                                                "evaluation/env_runners/episode_return_mean": 400}})
    assert experiment.stop["training_iteraton"] == 5
    (warning,) = capsys.readouterr().err.strip().splitlines()
    assert "stop key 'training_iteraton'" in warning
    assert "did you mean 'training_iteration'" in warning


def test_every_tuned_example_passes_the_checks():
    minatar_installed = importlib.util.find_spec("minatar") is not None
    for path in sorted((REPO / "tuned_examples").glob("*.yaml")):
        if path.name.startswith("minatar") and not minatar_installed:
            with pytest.raises(UserError, match=r"pip install -e \"\.\[minatar\]\""):
                load_experiments(str(path))
            continue
        experiments = load_experiments(str(path))
        assert experiments, path
        for experiment in experiments:
            assert experiment.run == "BarlowZero"
    sweep = load_experiments(str(REPO / "tuned_examples" / "breakout_sweep.yaml"))
    trials = {e.name: sum(1 for _ in config_variants(e.config)) for e in sweep}
    assert trials == {
        "breakout-sweep-consistency": 3,
        "breakout-sweep-lr": 3,
        "breakout-sweep-lr-schedule": 2,
        "breakout-sweep-projection": 4,
        "breakout-sweep-optimizer": 4,
    }
    efficientzero = load_experiments(str(REPO / "tuned_examples" / "breakout_efficientzero.yaml"))
    assert efficientzero[0].config["consistency_loss"] == "simsiam"
    muzero = load_experiments(str(REPO / "tuned_examples" / "breakout_muzero.yaml"))
    assert muzero[0].config["consistency_loss"] == "none"


def test_yaml_search_spaces_become_tune_search_spaces():
    from ray.tune.search.sample import Categorical, Float

    space = to_tune_search_spaces(
        {"lr": {"loguniform": [1e-4, 1e-1]}, "momentum": {"uniform": [0.8, 0.99]},
         "optimizer": {"choice": ["sgd", "adam"]}, "batch_size": {"grid_search": [32, 64]},
         "evaluation_config": {"explore": False}},
        "config", "x",
    )
    assert isinstance(space["lr"], Float) and space["lr"].lower == 1e-4
    assert isinstance(space["momentum"], Float)
    assert isinstance(space["optimizer"], Categorical)
    assert space["batch_size"] == {"grid_search": [32, 64]}
    assert space["evaluation_config"] == {"explore": False}
    # Every grid value and both ends of each range are checked against validate().
    variants = list(config_variants({"lr": {"loguniform": [1e-4, 1e-1]},
                                     "batch_size": {"grid_search": [32, 64]}}))
    assert {(v["lr"], v["batch_size"]) for v in variants} == {
        (1e-4, 32), (1e-4, 64), (1e-1, 32), (1e-1, 64)}
