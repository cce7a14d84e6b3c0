"""`rllib evaluate` on an Atari checkpoint (whole games, a GIF of one), and checkpoint lookup."""

from __future__ import annotations

import json
import os
import pickle
import pty
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import ray
from PIL import Image, ImageSequence

from rllib_barlowzero import BarlowZeroConfig
from rllib_barlowzero.evaluate import (
    CheckpointError,
    EvaluateError,
    find_checkpoint,
    format_table,
    load_algorithm,
    play_games,
    summary_statistics,
)

try:  # tests/ on sys.path (pytest's default import of test modules)
    from tiny import MICRO_ATARI
except ImportError:  # tests/ imported as a package
    from tests.tiny import MICRO_ATARI

REPO = Path(__file__).resolve().parents[1]
RLLIB = str(Path(sys.executable).with_name("rllib"))
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
MAX_MOVES = 30

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="module")
def breakout_checkpoint(tmp_path_factory) -> Path:
    """An (untrained) tiny-network BarlowZero checkpoint on Breakout, games capped at 30 moves."""
    path = tmp_path_factory.mktemp("breakout") / "checkpoint"
    config = (
        BarlowZeroConfig()
        .environment("BreakoutNoFrameskip-v4")
        .env_runners(num_env_runners=0, num_envs_per_env_runner=1, rollout_fragment_length=10)
        .training(
            **MICRO_ATARI, max_moves=MAX_MOVES,
        )
        .evaluation(evaluation_num_env_runners=0)
        .debugging(seed=0)
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        algo = config.build_algo()
        algo.save_to_path(str(path))
        algo.stop()
    finally:
        ray.shutdown()
    return path


def run_on_terminal(args: list[str], timeout: float = 300) -> tuple[int, str, str]:
    """Runs `args` with stderr on a pseudo-terminal; returns (exit status, stdout, stderr)."""
    master, terminal = pty.openpty()
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the terminal closed
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        done = subprocess.run(args, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=terminal,
                              text=True, timeout=timeout)
    finally:
        os.close(terminal)
        reader.join(timeout=10)
        os.close(master)
    return done.returncode, done.stdout, b"".join(chunks).decode(errors="replace")


def test_evaluate_plays_whole_atari_games_and_records_a_gif(breakout_checkpoint, tmp_path):
    out, video = tmp_path / "scores.json", tmp_path / "game.gif"
    returncode, stdout, stderr = run_on_terminal(
        [RLLIB, "evaluate", str(breakout_checkpoint), "--episodes", "2", "--out", str(out),
         "--video", str(video)],
    )
    assert returncode == 0, stderr[-3000:]
    assert "BarlowZero on BreakoutNoFrameskip-v4: 2 games" in stdout
    # On a terminal, the progress bar moves at each game's end.
    bar = [line for line in stderr.replace("\r\n", "\n").replace("\n", "\r").split("\r")
           if line.startswith("games [")]
    assert [line.split()[2] for line in bar] == ["1/2", "2/2"], stderr[-3000:]
    report = json.loads(out.read_text())
    # Evaluation games are whole games (no episodic life) cut at max_moves, with raw scores.
    assert report["lengths"] == [MAX_MOVES, MAX_MOVES]
    # Both were cut at the move cap, and the report says so.
    assert report["truncated"] == 2 and report["truncated_share"] == 1.0
    assert "games cut at the move cap: 2 of 2 (100%)" in stdout
    assert all(score >= 0 for score in report["scores"])
    assert f"(one game: score {report['scores'][0]:g}, {MAX_MOVES} steps)" in stdout
    # The GIF shows the full-resolution screen, one frame per agent step plus the first, 40 ms
    # each (identical consecutive frames are merged into one longer frame).
    frames = iio.imread(video, index=None)
    assert frames.shape[1:3] == (210, 160) and frames.std() > 0
    with Image.open(video) as gif:
        durations = [frame.info["duration"] for frame in ImageSequence.Iterator(gif)]
    assert sum(durations) == (MAX_MOVES + 1) * 40


def test_evaluate_searches_with_the_simulations_asked_for(breakout_checkpoint):
    # The checkpoint trained with 3 simulations; --num-simulations deepens only the evaluation
    # search, and the report says which search played.
    trained = MICRO_ATARI["num_simulations"]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for asked, expected in ((None, trained), (7, 7)):
            algo = load_algorithm(str(breakout_checkpoint), num_simulations=asked)
            try:
                assert algo.eval_env_runner.module.mcts_config.num_simulations == expected
                assert algo.env_runner.module.mcts_config.num_simulations == trained
                report = play_games(algo, 1, progress=False)
            finally:
                algo.stop()
            assert report["num_simulations"] == expected
            assert f"greedy search ({expected} simulations)" in format_table(report)
    finally:
        ray.shutdown()
    for bad in (0, -2, True, 2.5):
        with pytest.raises(EvaluateError, match="--num-simulations must be an integer >= 1"):
            load_algorithm(str(breakout_checkpoint), num_simulations=bad)


def test_find_checkpoint_takes_a_trial_directory_latest(breakout_checkpoint, tmp_path):
    trial = tmp_path / "BarlowZero_trial"
    for name in ("checkpoint_000000", "checkpoint_000002"):
        shutil.copytree(breakout_checkpoint, trial / name)
    assert find_checkpoint(str(trial)) == str(trial / "checkpoint_000002")
    assert find_checkpoint(str(breakout_checkpoint)) == str(breakout_checkpoint)


def test_find_checkpoint_makes_relative_paths_absolute(breakout_checkpoint, monkeypatch):
    # RLlib's restore reads a relative path as a URI without a scheme and fails.
    monkeypatch.chdir(breakout_checkpoint.parent)
    found = find_checkpoint(breakout_checkpoint.name)
    assert found == str(breakout_checkpoint.resolve())


def test_find_checkpoint_refuses_other_algorithms_and_other_directories(
    breakout_checkpoint, tmp_path
):
    from ray.rllib.algorithms.ppo import PPO

    ppo = tmp_path / "ppo"
    shutil.copytree(breakout_checkpoint, ppo)
    with open(ppo / "class_and_ctor_args.pkl", "wb") as f:
        pickle.dump({"class": PPO, "ctor_args_and_kwargs": ((), {})}, f)
    with pytest.raises(CheckpointError, match="is a PPO checkpoint, not a BarlowZero one"):
        find_checkpoint(str(ppo))
    half = tmp_path / "half"
    shutil.copytree(breakout_checkpoint, half)
    (half / "class_and_ctor_args.pkl").unlink()
    with pytest.raises(CheckpointError, match="no class_and_ctor_args.pkl"):
        find_checkpoint(str(half))
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        find_checkpoint(str(tmp_path / "nowhere"))


def test_table_1_statistics():
    stats = summary_statistics([427.0, 274.0, 352.0, 351.0])
    assert stats == {
        "max": 427.0, "mean": pytest.approx(351.0), "median": 351.5, "min": 274.0,
        "std": pytest.approx(np.std([427.0, 274.0, 352.0, 351.0])),
    }
    table = format_table({
        "algorithm": "BarlowZero", "env": "BreakoutNoFrameskip-v4", "episodes": 4,
        "checkpoint": None, "score": stats, "length": summary_statistics([1, 2, 3, 4]),
    })
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[3:]}
    assert list(rows) == ["max", "mean", "median", "min", "std"]
    assert rows["max"] == ["427.0", "4.0"] and rows["min"] == ["274.0", "1.0"]


def test_table_counts_the_games_cut_at_the_move_cap():
    stats = summary_statistics([1.0, 2.0])
    report = {
        "algorithm": "BarlowZero", "env": "BreakoutNoFrameskip-v4", "episodes": 32,
        "checkpoint": None, "score": stats, "length": stats, "truncated": 3,
        "truncated_share": 3 / 32,
    }
    assert format_table(report).splitlines()[-1] == "games cut at the move cap: 3 of 32 (9%)"



def test_table_shows_the_share_of_moves_per_action():
    stats = summary_statistics([1.0, 2.0])
    report = {
        "algorithm": "BarlowZero", "env": "BreakoutNoFrameskip-v4", "episodes": 2,
        "checkpoint": None, "score": stats, "length": stats, "truncated": 0,
        "truncated_share": 0.0, "action_counts": [0, 30, 10, 60],
    }
    last = format_table(report).splitlines()[-1]
    assert last == "moves per action: 0: 0%, 1: 30%, 2: 10%, 3: 60%"
