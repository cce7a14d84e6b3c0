"""BarlowZero end to end on CartPole with a tiny config: train, evaluate, checkpoint, restore."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.core import DEFAULT_MODULE_ID

from rllib_barlowzero import BarlowZeroConfig

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

try:  # tests/ on sys.path (pytest's default import of test modules)
    from tiny import tiny_cartpole_config as tiny_config
except ImportError:  # tests/ imported as a package
    from tests.tiny import tiny_cartpole_config as tiny_config

pytestmark = pytest.mark.usefixtures("ray_session")


def module_of(algo: Algorithm):
    return algo.learner_group._learner.module[DEFAULT_MODULE_ID]


def weights_of(algo: Algorithm) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in module_of(algo).state_dict().items()}


@pytest.fixture(scope="module")
def trained():
    algo = tiny_config().build_algo()
    results = [algo.train() for _ in range(3)]
    yield algo, results
    algo.stop()


def test_trains_and_reports_metrics(trained):
    algo, results = trained
    last = results[-1]
    assert last["training_steps_done"] > 0
    learner = last["learners"][DEFAULT_MODULE_ID]
    for key in ("value_loss", "value_prefix_loss", "policy_loss", "consistency_loss",
                "total_loss", "lr"):
        assert np.isfinite(learner[key]), key
    assert last["replay_buffer"]["num_steps"] > 0
    assert 0.0 <= last["learner_idle_share"] <= 1.0
    assert last["learner_steps_per_s"] > 0 and last["env_steps_per_s"] > 0
    assert np.isfinite(last["search"]["root_value_mean"])
    # Visit-count entropy over 2 actions lies in [0, log 2].
    assert 0.0 <= last["search"]["visit_entropy_mean"] <= np.log(2) + 1e-6
    # The module's step counter counts gradient steps.
    assert int(module_of(algo).gradient_steps) == last["training_steps_done"]


def test_episodes_carry_search_outputs(trained):
    algo, _ = trained
    episodes = algo.env_runner.sample(num_timesteps=8, explore=True)
    for episode in episodes:
        policy = np.asarray(episode.get_extra_model_outputs("mcts_policy"))
        if len(episode) == 0:
            continue
        assert policy.shape == (len(episode), 2)
        np.testing.assert_allclose(policy.sum(axis=1), 1.0, rtol=1e-5)
        # Visit distributions are multiples of 1 / num_simulations.
        np.testing.assert_allclose(policy * 8, np.round(policy * 8), atol=1e-4)
        assert np.asarray(episode.get_extra_model_outputs("root_value")).shape == (len(episode),)


def test_evaluation_reports_max_mean_min(trained):
    algo, _ = trained
    evaluation = algo.evaluate()["env_runners"]
    assert evaluation["num_episodes"] >= 4
    assert evaluation["episode_return_min"] <= evaluation["episode_return_mean"]
    assert evaluation["episode_return_mean"] <= evaluation["episode_return_max"]


def test_checkpoint_restores_buffer_counters_and_continues(trained, tmp_path):
    algo, results = trained
    path = algo.save_to_path(str(tmp_path / "ckpt"))
    restored = Algorithm.from_checkpoint(path)
    try:
        # The restore closed the episodes that were in progress (their runners are gone):
        # every step played is sampleable. Close them in the original too, to compare.
        played = algo.replay_buffer.num_steps() + algo.replay_buffer.num_pending_steps()
        assert restored.replay_buffer.num_steps() == played
        algo.replay_buffer.close_episodes_except(set())
        assert restored.replay_buffer.num_steps() == algo.replay_buffer.num_steps()
        assert restored._training_steps_done == algo._training_steps_done
        assert int(module_of(restored).gradient_steps) == int(module_of(algo).gradient_steps)
        for key, value in weights_of(algo).items():
            np.testing.assert_array_equal(weights_of(restored)[key], value, err_msg=key)
        # The restored buffer samples exactly what the original would.
        a = algo.replay_buffer.sample(8)
        b = restored.replay_buffer.sample(8)
        np.testing.assert_array_equal(a.frames, b.frames)
        before = restored._training_steps_done
        result = restored.train()
        assert result["training_steps_done"] > before
        # The learning rate continues from the restored step (cosine over training_steps).
        from rllib_barlowzero.torch.barlowzero_torch_learner import learning_rate

        step = int(module_of(restored).gradient_steps) - 1
        assert result["learners"][DEFAULT_MODULE_ID]["lr"] == pytest.approx(
            learning_rate(restored.config, step), rel=0.2
        )
    finally:
        restored.stop()


def test_state_holds_no_tensors_so_it_loads_on_any_device(trained):
    # A checkpoint written by a GPU run must load on a CPU-only machine and the reverse: nothing
    # in the algorithm's state may be a torch tensor (which would remember its device).
    algo, _ = trained
    tensors = []

    def walk(value, path):
        if isinstance(value, torch.Tensor):
            tensors.append(path)
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{path}/{key}")
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                walk(item, f"{path}/{i}")

    state = algo.get_state()
    walk(state, "")
    assert not tensors, tensors[:5]
    assert state["barlowzero"]["target_model"]  # the target model is in it, as numpy


def test_learning_rate_schedules():
    from rllib_barlowzero.torch.barlowzero_torch_learner import learning_rate

    cfg = BarlowZeroConfig().training(lr=0.01, training_steps=1000, lr_warmup_steps=0)
    assert learning_rate(cfg, 0) == pytest.approx(0.01)
    assert learning_rate(cfg, 500) == pytest.approx(0.005)
    assert learning_rate(cfg, 1000) == pytest.approx(0.0, abs=1e-12)
    assert learning_rate(cfg, 250) == pytest.approx(0.01 * (1 + np.cos(np.pi / 4)) / 2)
    step = BarlowZeroConfig().training(lr=0.2, training_steps=1200, lr_schedule="step",
                                       lr_warmup_steps=100)
    assert learning_rate(step, 0) == pytest.approx(0.2 / 100)
    assert learning_rate(step, 99) == pytest.approx(0.2)
    assert learning_rate(step, 500) == pytest.approx(0.2)
    assert learning_rate(step, 1000) == pytest.approx(0.02)


def test_same_seed_same_run():
    runs = []
    for _ in range(2):
        algo = tiny_config(num_steps_sampled_before_learning_starts=50).build_algo()
        for _ in range(2):
            algo.train()
        runs.append((weights_of(algo), algo.replay_buffer.sample(4).frames))
        algo.stop()
    (w0, f0), (w1, f1) = runs
    np.testing.assert_array_equal(f0, f1)
    for key in w0:
        np.testing.assert_array_equal(w0[key], w1[key], err_msg=key)


def test_loss_decreases_on_a_fixed_batch(trained):
    algo, _ = trained
    windows = algo.replay_buffer.sample(16)
    batch = algo.reanalyzer.make_batch(windows, 0, 0)
    learner = algo.learner_group._learner
    from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch

    ma_batch = MultiAgentBatch({DEFAULT_MODULE_ID: SampleBatch(batch)}, env_steps=16)
    losses = []
    for _ in range(30):
        result = learner.update(batch=ma_batch, timesteps={})
        losses.append({k: float(result[DEFAULT_MODULE_ID][k].peek())
                       for k in ("value_loss", "value_prefix_loss", "policy_loss", "total_loss")})
    for key in losses[0]:
        assert losses[-1][key] < losses[0][key], (key, losses[0][key], losses[-1][key])


def test_two_learners_keep_identical_parameters():
    config = tiny_config(batch_size=16).learners(num_learners=2)
    algo = config.build_algo()
    try:
        algo.train()
        algo.train()
        # Parameters (DDP averages their gradients); BatchNorm running statistics are per
        # learner, as in any DDP run without SyncBatchNorm.
        states = algo.learner_group.foreach_learner(
            lambda learner: {k: v.detach().cpu().numpy() for k, v in
                             learner.module[DEFAULT_MODULE_ID].unwrapped().named_parameters()}
        )
        states = [s.get() if hasattr(s, "get") else s for s in states]
        assert algo._training_steps_done > 0
        for key in states[0]:
            np.testing.assert_allclose(states[0][key], states[1][key], rtol=0, atol=0,
                                       err_msg=key)
    finally:
        algo.stop()


def test_bad_spaces_are_refused_at_build():
    config = tiny_config().environment("Pendulum-v1")
    with pytest.raises(Exception, match="Discrete action space"):
        config.build_algo()


def test_torch_seed_does_not_leak_into_search():
    # Acting draws only from the module's own streams: torch's global seed changes nothing, the
    # same stream key gives the same visits and actions.
    algo = tiny_config().build_algo()
    try:
        module = algo.env_runner.module
        obs = torch.zeros((3, 8))
        module.set_random_streams((1, 2, 3))
        torch.manual_seed(0)
        a = module.forward_inference({"obs": obs})
        module.set_random_streams((1, 2, 3))
        torch.manual_seed(99)
        b = module.forward_inference({"obs": obs})
        np.testing.assert_array_equal(a["mcts_policy"], b["mcts_policy"])
        np.testing.assert_array_equal(a["actions"], b["actions"])
    finally:
        algo.stop()


def test_evaluate_without_interval_uses_greedy_evaluation_runners():
    # RLlib would evaluate on the (exploring) training env runner when no evaluation interval is
    # set; BarlowZero always builds evaluation runners, which search without noise.
    algo = tiny_config().evaluation(evaluation_interval=None).build_algo()
    try:
        assert algo.eval_env_runner is not None
        assert algo.eval_env_runner.config.explore is False
        algo.evaluate()
    finally:
        algo.stop()


def test_target_model_lags_one_refresh_and_beta_anneals():
    # EfficientZero: each refresh loads the snapshot of the previous one (targets 1-2 intervals
    # old); the importance-weight exponent anneals from priority_prob_beta to 1 over training.
    algo = tiny_config(target_update_interval=4, priority_prob_beta=0.4).build_algo()
    snapshots = {0: algo._next_target_weights}
    online_weights, sample = algo._online_weights, algo.replay_buffer.sample
    betas = []

    def recording_weights():
        snapshots[algo._training_steps_done] = online_weights()
        return snapshots[algo._training_steps_done]

    def recording_sample(batch_size, beta=None):
        betas.append(beta)
        return sample(batch_size, beta=beta)

    algo._online_weights, algo.replay_buffer.sample = recording_weights, recording_sample
    try:
        while algo._training_steps_done < 13:
            algo.train()
        last_refresh = algo._training_steps_done // 4 * 4
        # The next batch would be made with this target; a checkpoint stores it.
        target = algo.reanalyze_queue.target_weights
        assert algo.get_state()["barlowzero"]["target_model"] is target
        lagged, newest = snapshots[last_refresh - 4], snapshots[last_refresh]
        for key, value in lagged.items():
            np.testing.assert_array_equal(np.asarray(target[key]), np.asarray(value), err_msg=key)
        assert any(not np.array_equal(np.asarray(newest[k]), np.asarray(target[k]))
                   for k in newest)
        # One sample per update, update i with beta = 0.4 + 0.6 * i / training_steps.
        expected = [0.4 + 0.6 * i / 1000 for i in range(len(betas))]
        np.testing.assert_allclose(betas, expected)
    finally:
        algo.stop()
