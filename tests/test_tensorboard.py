"""TensorBoard: the RLlib callback in a plain `algo.train()` loop, and tag flattening."""

from __future__ import annotations

import glob
import os
import shutil

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rllib_barlowzero import BarlowZeroConfig
from rllib_barlowzero.tensorboard import TensorBoardCallback, flatten_scalars

try:  # tests/ on sys.path (pytest's default import of test modules)
    from tiny import TINY_CARTPOLE
except ImportError:  # tests/ imported as a package
    from tests.tiny import TINY_CARTPOLE

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

LOSS_TAGS = [
    f"learners/default_policy/{name}"
    for name in ("total_loss", "value_loss", "value_prefix_loss", "policy_loss",
                 "consistency_loss", "lr")
]


def read_scalars(logdir: str) -> EventAccumulator:
    files = glob.glob(os.path.join(logdir, "**", "events.out.tfevents.*"), recursive=True)
    assert files, f"no event files under {logdir}"
    accumulator = EventAccumulator(os.path.dirname(files[0]), size_guidance={"scalars": 0})
    accumulator.Reload()
    return accumulator


def test_flatten_scalars_nests_tags_and_skips_non_scalars():
    result = {
        "learners": {"default_policy": {"value_loss": np.float32(1.5), "lr": 0.01}},
        "env_runners": {"episode_return_mean": np.nan, "episode_len_max": np.int64(7)},
        "done": False, "trial_id": "default", "hist": [1, 2, 3], "vec": np.ones(3),
        "one": np.array([2.0]),
    }
    assert dict(flatten_scalars(result)) == {
        "learners/default_policy/value_loss": 1.5,
        "learners/default_policy/lr": 0.01,
        "env_runners/episode_len_max": 7.0,
        "one": 2.0,
    }


def test_callback_writes_every_metric_from_a_plain_train_loop(ray_session, tmp_path):
    class TensorBoardHere(TensorBoardCallback):
        logdir = str(tmp_path / "tb")

    config = (
        BarlowZeroConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=0, num_envs_per_env_runner=4, rollout_fragment_length=25)
        .training(
            **{**TINY_CARTPOLE, "num_steps_sampled_before_learning_starts": 50},
        )
        .evaluation(evaluation_interval=1, evaluation_duration=1, evaluation_num_env_runners=0)
        .callbacks(TensorBoardHere)
        .debugging(seed=0)
    )
    algo = config.build_algo()
    try:
        results = [algo.train() for _ in range(2)]
    finally:
        algo.stop()

    scalars = read_scalars(str(tmp_path / "tb"))
    tags = set(scalars.Tags()["scalars"])
    for tag in [*LOSS_TAGS, "evaluation/env_runners/episode_return_mean",
                "env_runners/episode_return_mean", "training_steps_done",
                "replay_buffer/num_steps", "timers/learner_update_s"]:
        assert tag in tags, tag
    # One point per iteration, at the iteration as step, with the value train() returned.
    steps = [event.step for event in scalars.Scalars("training_steps_done")]
    assert steps == [1, 2]
    last_loss = scalars.Scalars("learners/default_policy/value_loss")[-1]
    assert last_loss.step == 2
    expected = results[-1]["learners"]["default_policy"]["value_loss"]
    assert last_loss.value == pytest.approx(expected, rel=1e-5)
    # Bookkeeping keys are not metrics.
    assert not tags & {"config", "pid", "timestamp", "training_iteration", "done"}


def test_callback_defaults_to_the_algorithm_logdir(ray_session):
    config = (
        BarlowZeroConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=0, num_envs_per_env_runner=1, rollout_fragment_length=10)
        .training(channels=8, mlp_hidden_layers=[8], lstm_hidden_size=8, support_size=5,
                  proj_hid=8, proj_out=8, pred_hid=8, pred_out=8, num_simulations=2,
                  batch_size=4, num_steps_sampled_before_learning_starts=1000)
        .evaluation(evaluation_num_env_runners=0)
        .callbacks(TensorBoardCallback)
    )
    algo = config.build_algo()
    try:
        algo.train()
        assert "training_steps_done" in read_scalars(algo.logdir).Tags()["scalars"]
    finally:
        algo.stop()
        shutil.rmtree(algo.logdir, ignore_errors=True)  # ~/ray_results/<date>
