"""`flush_denormal` reaches every thread that runs the network: the driver's, its reanalyze thread,
remote env runners (training and evaluation) and reanalyze actors; False clears it again.

The probe multiplies a denormal float by 1: with the CPU's denormals-are-zero mode the product
is 0, without it the denormal survives. The mode is per thread, so each place is probed on the
thread that runs its searches.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import ray
import torch

from rllib_barlowzero.barlowzero import TRAINING_DEFAULTS
from rllib_barlowzero.reanalyze_workers import ReanalyzeWorker
from rllib_barlowzero.torch.networks import flush_denormals, flush_denormals_from

try:  # tests/ on sys.path (pytest's default import of test modules)
    from tiny import tiny_cartpole_config
except ImportError:  # tests/ imported as a package
    from tests.tiny import tiny_cartpole_config

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

DENORMAL = 1e-39  # below float32's smallest normal, 1.18e-38


def denormals_survive() -> bool:
    """True when this thread computes with denormal floats (torch and numpy), False when it
    flushes them; an error when the two disagree."""
    in_torch = bool((torch.full((256,), DENORMAL) * 1.0).ne(0).all())
    in_numpy = bool((np.full(256, DENORMAL, np.float32) * np.float32(1.0) != 0).all())
    assert in_torch == in_numpy
    return in_torch


def in_new_thread(fn):
    result = {}
    thread = threading.Thread(target=lambda: result.update(value=fn()))
    thread.start()
    thread.join()
    return result["value"]


@pytest.fixture
def restore_mode():
    before = denormals_survive()
    yield
    flush_denormals(not before)


def test_the_mode_is_per_thread_and_inherited_by_threads_started_after(restore_mode):
    flush_denormals(False)
    assert denormals_survive()
    flush_denormals(True)
    assert not denormals_survive()
    assert not in_new_thread(denormals_survive)
    flush_denormals(False)
    assert denormals_survive() and in_new_thread(denormals_survive)


def test_the_default_is_on_and_old_module_configs_read_off():
    assert TRAINING_DEFAULTS["flush_denormal"] is True
    assert flush_denormals_from({"flush_denormal": True}) is True
    # A module checkpoint from before the setting ran without the mode; replaying it must not
    # change its arithmetic.
    assert flush_denormals_from({}) is False


@pytest.mark.parametrize("value", [1, "yes", None])
def test_a_non_bool_is_refused(value):
    config = tiny_cartpole_config(flush_denormal=value)
    with pytest.raises(ValueError, match="`flush_denormal`"):
        config.validate()


def test_every_thread_that_runs_the_network_gets_the_setting(restore_mode):
    def flushed_remotely() -> bool:
        # Defined here so that Ray ships it by value (the test module is not importable there).
        import torch

        return not bool((torch.full((256,), 1e-39) * 1.0).ne(0).all())

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        # Off, all in the driver: building the algorithm clears the mode in the main thread,
        # and the reanalyze thread started afterwards inherits it.
        flush_denormals(True)
        algo = tiny_cartpole_config(flush_denormal=False).build_algo()
        try:
            assert denormals_survive()
            assert algo.reanalyze_queue._pool.submit(denormals_survive).result()
        finally:
            algo.stop()

        # On, with remote env runners and evaluation env runners.
        flush_denormals(False)
        config = tiny_cartpole_config(flush_denormal=True).env_runners(
            num_env_runners=1, num_cpus_per_env_runner=0.5
        ).evaluation(evaluation_num_env_runners=1)
        algo = config.build_algo()
        try:
            assert not denormals_survive()
            assert not algo.reanalyze_queue._pool.submit(denormals_survive).result()
            for group in (algo.env_runner_group, algo.eval_env_runner_group):
                flushed = group.foreach_env_runner(
                    lambda runner: flushed_remotely(), local_env_runner=False
                )
                assert flushed == [True]
            network = algo._build_network()
            for setting in (True, False):
                worker_config = config.copy(copy_frozen=False).training(flush_denormal=setting)
                actor = ray.remote(num_cpus=0.25)(ReanalyzeWorker).remote(
                    network, worker_config, 0, 1
                )
                flushed = ray.get(actor.__ray_call__.remote(lambda self: flushed_remotely()))
                assert flushed is setting
                ray.kill(actor)
        finally:
            algo.stop()
    finally:
        ray.shutdown()
