"""Episodes in progress when a run is restored or an env runner dies are closed, not orphaned."""

from __future__ import annotations

import os
import time

import pytest
import ray
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME

try:  # tests/ on sys.path (pytest's default import of test modules)
    from tiny import tiny_cartpole_config
except ImportError:  # tests/ imported as a package
    from tests.tiny import tiny_cartpole_config

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
NUM_ENVS = 4


pytestmark = pytest.mark.usefixtures("ray_session")


def check_buffer(algo: Algorithm) -> None:
    """At most one episode in progress per env, and every step played is in the buffer:
    committed (sampleable) or pending in a live episode."""
    buffer = algo.replay_buffer
    assert len(buffer.episodes_in_progress()) <= NUM_ENVS
    played = algo.metrics.peek((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME))
    assert buffer.num_steps() + buffer.num_pending_steps() == played


def test_restores_and_a_restarted_env_runner_leave_no_orphans(tmp_path):
    config = tiny_cartpole_config(num_steps_sampled_before_learning_starts=10_000).env_runners(
        num_env_runners=1, num_envs_per_env_runner=NUM_ENVS
    ).fault_tolerance(restart_failed_env_runners=True)
    algo = config.build_algo()
    try:
        for _ in range(2):
            algo.train()
            check_buffer(algo)
        # Resume twice: each restore closes the episodes that were in progress at the save.
        expected_closed = 0
        for resume in range(2):
            in_progress = len(algo.replay_buffer.episodes_in_progress())
            committed = algo.replay_buffer.num_steps() + algo.replay_buffer.num_pending_steps()
            path = algo.save_to_path(str(tmp_path / f"ckpt{resume}"))
            algo.stop()
            algo = Algorithm.from_checkpoint(path)
            assert algo.replay_buffer.episodes_in_progress() == []
            assert algo.replay_buffer.num_steps() == committed  # closed, all sampleable
            expected_closed += in_progress
            assert in_progress > 0 and algo._orphaned_episodes_closed == expected_closed
            algo.train()
            check_buffer(algo)
        # Kill the env runner: its episodes are closed, the restarted runner plays new ones.
        closed_before = algo._orphaned_episodes_closed
        in_progress = len(algo.replay_buffer.episodes_in_progress())
        assert in_progress > 0
        runner = algo.env_runner_group._worker_manager.actors()[1]
        ray.kill(runner, no_restart=False)  # a crash: Ray restarts the actor, RLlib re-syncs it
        deadline = time.monotonic() + 120  # Ray restarts the actor, RLlib probes it back in
        while algo.env_runner_group.num_healthy_remote_workers() == 0:
            assert time.monotonic() < deadline, "the env runner was not restarted"
            result = algo.train()
            check_buffer(algo)
            time.sleep(1)
        for _ in range(2):
            result = algo.train()
            check_buffer(algo)
        assert algo._orphaned_episodes_closed == closed_before + in_progress
        assert result["replay_buffer"]["orphaned_episodes_closed"] == closed_before + in_progress
        # Only the restarted runner's episodes can be in progress.
        assert len(algo.replay_buffer.episodes_in_progress()) <= NUM_ENVS
    finally:
        algo.stop()
