"""BarlowZero on Breakout with a tiny network: one pass through the whole Atari pipeline."""

from __future__ import annotations

import os

import numpy as np
import pytest

from rllib_barlowzero import BarlowZeroConfig

try:  # tests/ on sys.path (pytest's default import of test modules)
    from tiny import MICRO_ATARI
except ImportError:  # tests/ imported as a package
    from tests.tiny import MICRO_ATARI

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


pytestmark = pytest.mark.usefixtures("ray_session")


def test_breakout_tiny_network_trains_and_evaluates():
    config = (
        BarlowZeroConfig()
        .environment("BreakoutNoFrameskip-v4", env_config={"fire_on_life_start": True})
        .env_runners(num_env_runners=0, num_envs_per_env_runner=2, rollout_fragment_length=20)
        .training(
            **MICRO_ATARI, num_steps_sampled_before_learning_starts=20, replay_ratio=0.05,
            max_moves=40,
        )
        .evaluation(evaluation_duration=1, evaluation_num_env_runners=0)
        .debugging(seed=0)
    )
    algo = config.build_algo()
    try:
        # The module sees 4 stacked RGB frames, channels first, as uint8.
        space = algo.env_runner.module.observation_space
        assert space.shape == (12, 96, 96) and space.dtype == np.uint8
        assert algo.env_runner.module.num_actions == 4  # the minimal action set
        results = [algo.train() for _ in range(2)]
        assert results[-1]["training_steps_done"] > 0
        stats = results[-1]["replay_buffer"]
        # Frames are stored once per step: close to one 96x96x3 uint8 frame per env step.
        assert 27_648 <= stats["bytes_per_step"] < 1.6 * 27_648
        # Evaluation plays whole games (no episodic life) capped at max_moves.
        evaluation = algo.evaluate()["env_runners"]
        assert evaluation["num_episodes"] >= 1
        assert evaluation["episode_len_mean"] <= 40
        assert algo.eval_env_runner.config.env_config["training"] is False
        # The Atari env_config reaches both pipelines, the training one with episodic lives.
        train_env = str(algo.env_runner.env.unwrapped.envs[0])
        eval_env = str(algo.eval_env_runner.env.unwrapped.envs[0])
        assert "FireOnLifeStart" in train_env and "FireOnLifeStart" in eval_env
        assert "EpisodicLife" in train_env and "EpisodicLife" not in eval_env
    finally:
        algo.stop()
