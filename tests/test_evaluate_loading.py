"""`load_algorithm` reads only the RLModule of a checkpoint and plays the games a full restore
plays; the progress bar over games (terminal only, one update per game)."""

from __future__ import annotations

import io
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.core import DEFAULT_MODULE_ID

from rllib_barlowzero.evaluate import (
    CHECKPOINT_FILES,
    evaluation_config,
    format_table,
    load_algorithm,
    module_dir,
    play_games,
)

try:  # tests/ on sys.path (pytest's default import of test modules)
    from tiny import tiny_cartpole_config
except ImportError:  # tests/ imported as a package
    from tests.tiny import tiny_cartpole_config

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
GAMES = 4


pytestmark = pytest.mark.usefixtures("ray_session")


def learner_weights(algo: Algorithm) -> dict[str, np.ndarray]:
    module = algo.learner_group._learner.module[DEFAULT_MODULE_ID]
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A tiny CartPole checkpoint after some learning (a non-empty replay buffer, optimizer
    state), with the learner's weights at the start and at the save."""
    path = tmp_path_factory.mktemp("cartpole") / "checkpoint"
    algo = tiny_cartpole_config().build_algo()
    try:
        initial = learner_weights(algo)
        for _ in range(3):
            result = algo.train()
        assert result["training_steps_done"] > 0 and len(algo.replay_buffer) > 0
        algo.save_to_path(str(path))
        saved = learner_weights(algo)
    finally:
        algo.stop()
    return path, initial, saved


@pytest.fixture(scope="module")
def checkpoint(trained) -> Path:
    return trained[0]


def full_restore(checkpoint: Path, **kwargs) -> Algorithm:
    """The former `load_algorithm`: the whole algorithm state, replay buffer included."""
    algo = Algorithm.from_checkpoint(str(checkpoint),
                                     config=evaluation_config(str(checkpoint), **kwargs))
    algo.eval_env_runner_group.sync_weights(
        from_worker_or_learner_group=algo.learner_group, inference_only=True
    )
    return algo


def eval_weights(algo: Algorithm) -> dict[str, np.ndarray]:
    module = algo.eval_env_runner.module
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def games(algo: Algorithm, episodes: int = GAMES) -> tuple[list[float], list[int]]:
    report = play_games(algo, episodes, progress=False)
    return report["scores"], report["lengths"]


def test_light_load_plays_the_games_of_a_full_restore(trained):
    checkpoint, initial, saved = trained
    full = full_restore(checkpoint)
    try:
        assert len(full.replay_buffer) > 0  # the full restore read the replay buffer
        full_weights, full_games = eval_weights(full), games(full)
    finally:
        full.stop()
    light = load_algorithm(str(checkpoint))
    try:
        assert len(light.replay_buffer) == 0  # ... the light one did not
        light_weights = eval_weights(light)
        assert light_weights.keys() == full_weights.keys()
        # The learner's weights at the save, not those of a fresh build.
        for key, value in light_weights.items():
            np.testing.assert_array_equal(value, saved[key], err_msg=key)
        assert any(not np.array_equal(light_weights[k], initial[k]) for k in light_weights)
        for key, value in full_weights.items():
            np.testing.assert_array_equal(light_weights[key], value, err_msg=key)
        # Same greedy actions: the same returns and lengths, game by game.
        assert games(light) == full_games
    finally:
        light.stop()


def test_light_load_needs_only_the_module(checkpoint, tmp_path):
    # Keep the checkpoint's metadata, config and RLModule; drop every other state file (the
    # algorithm state with the replay buffer, the optimizer, the env runners' states).
    trimmed = tmp_path / "checkpoint"
    shutil.copytree(checkpoint, trimmed)
    module = module_dir(str(trimmed))
    for name in ("env_runner", "eval_env_runner"):
        shutil.rmtree(trimmed / name)
    for path in list(trimmed.rglob("*")):
        metadata = path.parent == trimmed and path.name in CHECKPOINT_FILES
        if path.is_file() and module not in path.parents and not metadata:
            path.unlink()
    assert not (trimmed / "algorithm_state.pkl").exists()
    assert not (trimmed / "learner_group" / "learner" / "state.pkl").exists()

    whole = load_algorithm(str(checkpoint), seed=3)
    try:
        expected = games(whole, 2)
    finally:
        whole.stop()
    light = load_algorithm(str(trimmed), seed=3)
    try:
        assert games(light, 2) == expected
    finally:
        light.stop()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [True, False])
def test_progress_bar_moves_per_game_on_a_terminal_only(checkpoint, monkeypatch, terminal):
    stderr = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    algo = load_algorithm(str(checkpoint))
    try:
        report = play_games(algo, GAMES, progress=True)
    finally:
        algo.stop()
    updates = [line for line in stderr.getvalue().split("\r") if line.startswith("games [")]
    if not terminal:
        assert updates == []
        return
    assert [u.split()[2] for u in updates] == [f"{n}/{GAMES}" for n in range(1, GAMES + 1)]
    assert stderr.getvalue().endswith("\n")
    # Each update shows the game that just ended (games end in the order they are reported).
    lasts = [float(u.split("last ")[1].split()[0]) for u in updates]
    assert lasts == report["scores"]


def test_progress_bar_over_remote_env_runners(checkpoint, monkeypatch):
    monkeypatch.setattr(sys, "stderr", _Terminal())
    algo = load_algorithm(str(checkpoint), num_env_runners=1)
    try:
        report = play_games(algo, 3, progress=True)
    finally:
        algo.stop()
    updates = [line for line in sys.stderr.getvalue().split("\r") if line.startswith("games [")]
    assert [u.split()[2] for u in updates] == ["1/3", "2/3", "3/3"]
    assert report["episodes"] == 3


def test_table_counts_games_cut_at_the_move_cap():
    report = {
        "algorithm": "BarlowZero", "env": "CartPole-v1", "episodes": 32, "checkpoint": None,
        "score": dict.fromkeys(("max", "mean", "median", "min", "std"), 1.0),
        "length": dict.fromkeys(("max", "mean", "median", "min", "std"), 1.0),
        "truncated": 0, "truncated_share": 0.0,
    }
    assert format_table(report).splitlines()[-1] == "games cut at the move cap: 0 of 32 (0%)"
