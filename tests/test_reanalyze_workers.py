"""Reanalyze on Ray actors: same weights for any number of workers, crashes replaced, two nodes."""

from __future__ import annotations

import os

import numpy as np
import pytest
import ray
from ray.cluster_utils import Cluster
from ray.rllib.core import DEFAULT_MODULE_ID

try:  # tests/ on sys.path (pytest's default import of test modules)
    from tiny import tiny_cartpole_config
except ImportError:  # tests/ imported as a package
    from tests.tiny import tiny_cartpole_config

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

ITERATIONS = 4  # 100 env steps each; learning starts at 100: 30 updates, 6 target refreshes


@pytest.fixture
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def train(workers: int, queue_size: int = 2, sabotage=None):
    """Weights and counters after ITERATIONS iterations; `sabotage(algo)` runs after the first."""
    algo = tiny_cartpole_config(
        num_reanalyze_workers=workers, reanalyze_queue_size=queue_size,
        num_cpus_per_reanalyze_worker=0.5,
    ).build_algo()
    try:
        results = []
        for i in range(ITERATIONS):
            results.append(algo.train())
            if i == 0 and sabotage is not None:
                sabotage(algo)
        module = algo.learner_group._learner.module[DEFAULT_MODULE_ID]
        weights = {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}
        return weights, results, algo._training_steps_done, algo.reanalyze_queue.restarts
    finally:
        algo.stop()


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_same_weights_for_any_number_of_workers_and_reruns(local_ray):
    two, results, steps, _ = train(workers=2)
    assert steps == 30
    reanalyze = results[-1]["reanalyze"]
    assert reanalyze["num_workers"] == 2 and reanalyze["queue_depth_mean"] > 1.0
    assert 0.0 <= results[-1]["learner_idle_share"] <= 1.0
    assert_same_weights(two, train(workers=2)[0])  # a rerun
    assert_same_weights(two, train(workers=1)[0])  # one worker makes every batch
    assert_same_weights(two, train(workers=0)[0])  # the driver thread, same queue size
    # A different queue size samples windows at other moments: another (valid) run.
    other = train(workers=2, queue_size=3)[0]
    assert any(not np.array_equal(two[k], other[k]) for k in two)


def test_a_killed_worker_is_replaced_without_losing_or_repeating_updates(local_ray):
    reference, _, steps, _ = train(workers=2)

    def kill_mid_iteration(algo) -> None:
        # Kill worker 1 while the queue holds its next batch (the second of the iteration).
        queue = algo.reanalyze_queue
        next_batch, calls = queue.next_batch, []

        def next_batch_with_crash():
            calls.append(1)
            if len(calls) == 2:
                queue.kill_worker(1)
            return next_batch()

        queue.next_batch = next_batch_with_crash

    weights, results, steps_after_crash, restarts = train(workers=2, sabotage=kill_mid_iteration)
    assert restarts == 1
    restart_counts = [r["reanalyze"]["worker_restarts_lifetime"] for r in results[1:]]
    assert restart_counts == [1] * (ITERATIONS - 1)
    # Every update applied exactly once: the learner's step counter and the weights match the
    # run without a crash.
    assert steps_after_crash == steps == 30
    assert_same_weights(reference, weights)
    assert int(weights["gradient_steps"]) == 30  # the module's gradient-step counter


def test_workers_on_a_second_node_train():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1, resources={"reanalyze_node": 2})
    try:
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        algo = tiny_cartpole_config(
            num_reanalyze_workers=2, reanalyze_queue_size=2, num_cpus_per_reanalyze_worker=0.25,
            custom_resources_per_reanalyze_worker={"reanalyze_node": 1},
        ).build_algo()
        try:
            nodes = algo.reanalyze_queue.worker_node_ids()
            driver_node = ray.get_runtime_context().get_node_id()
            assert len(nodes) == 2 and driver_node not in nodes
            assert nodes[0] == nodes[1] == cluster.list_all_nodes()[1].node_id
            for _ in range(2):
                result = algo.train()
            assert algo._training_steps_done == 10
            assert result["reanalyze"]["num_workers"] == 2
        finally:
            algo.stop()
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_workers_the_cluster_cannot_place_are_refused(local_ray):
    with pytest.raises(ValueError, match="num_gpus_per_reanalyze_worker"):
        tiny_cartpole_config(num_reanalyze_workers=1, num_gpus_per_reanalyze_worker=1).build_algo()


@pytest.mark.parametrize(
    "settings, key",
    [
        ({"num_reanalyze_workers": -1}, "num_reanalyze_workers"),
        ({"num_reanalyze_workers": 3, "reanalyze_queue_size": 2}, "reanalyze_queue_size"),
        ({"num_cpus_per_reanalyze_worker": -0.5}, "num_cpus_per_reanalyze_worker"),
        ({"custom_resources_per_reanalyze_worker": {"x": -1}},
         "custom_resources_per_reanalyze_worker"),
        ({"mixed_precision": True}, "mixed_precision"),
    ],
)
def test_bad_reanalyze_settings_are_refused(settings, key):
    with pytest.raises(ValueError, match=key):
        tiny_cartpole_config(**settings).validate()
