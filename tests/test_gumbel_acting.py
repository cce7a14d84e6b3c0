"""`search_algorithm="gumbel"`: acting, reanalyze and Serve use `cython_mcts.run_gumbel_mcts`.

Expectations come from a direct `run_gumbel_mcts` call over the network written out plainly (one
list entry of states per simulation), with the noise drawn here by hand from the documented
streams: slot i of an acting batch from `default_rng([*key, i])`, reanalyze batch j from
`default_rng([seed, REANALYZE_STREAM, j])` after its revisit draws.
"""

from __future__ import annotations

import os
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from cython_mcts import GumbelSearchOutput, MCTSConfig, run_gumbel_mcts
from rllib_barlowzero import BarlowZeroConfig
from rllib_barlowzero.reanalyze import Reanalyzer
from rllib_barlowzero.replay_buffer import GameSegmentReplayBuffer
from rllib_barlowzero.streams import REANALYZE_STREAM
from rllib_barlowzero.torch.barlowzero_torch_rl_module import BarlowZeroTorchRLModule
from rllib_barlowzero.torch.networks import BarlowZeroNetwork

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

try:  # tests/ on sys.path (pytest's default import of test modules)
    from tiny import MICRO_NETWORK, plain_recurrent_fn, plain_vector_network, tiny_cartpole_config
except ImportError:  # tests/ imported as a package
    from tests.tiny import (
        MICRO_NETWORK,
        plain_recurrent_fn,
        plain_vector_network,
        tiny_cartpole_config,
    )

NUM_ACTIONS = 4
OBS_DIM = 8
# Non-default Gumbel settings, with fewer considered actions than actions.
GUMBEL = dict(search_algorithm="gumbel", max_num_considered_actions=3, gumbel_scale=0.7,
              value_scale=0.15, maxvisit_init=30.0)
TINY = dict(MICRO_NETWORK, lstm_hidden_size=8, mlp_hidden_layers=[16], num_simulations=7,
            lstm_horizon_len=2, discount=0.9)


def perturb(module: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere, so that values and priors differ between nodes."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.normal_(0.0, 0.5, generator=generator)


def build_module(**training: Any) -> BarlowZeroTorchRLModule:
    config = BarlowZeroConfig().training(**{**TINY, **GUMBEL, **training})
    module = RLModuleSpec(
        module_class=BarlowZeroTorchRLModule,
        observation_space=gym.spaces.Box(-1, 1, (OBS_DIM,), np.float32),
        action_space=gym.spaces.Discrete(NUM_ACTIONS),
        model_config=config.model_config,
    ).build()
    perturb(module, 0)
    module.eval()  # acting runs in eval mode (and restores train mode after): so do the checks
    return module


def direct_gumbel_search(net: torch.nn.Module, obs: torch.Tensor, cfg: MCTSConfig,
                         gumbel: np.ndarray) -> GumbelSearchOutput:
    """The Gumbel search written out plainly, with GUMBEL's settings."""
    with torch.no_grad():
        root, recurrent_fn = plain_recurrent_fn(net, obs, cfg.lstm_horizon_len)
        return run_gumbel_mcts(
            root.policy_logits.numpy(), root.value.numpy(), recurrent_fn, cfg, gumbel,
            max_num_considered_actions=GUMBEL["max_num_considered_actions"],
            value_scale=GUMBEL["value_scale"], maxvisit_init=GUMBEL["maxvisit_init"],
        )


def assert_acting_matches(out: dict[str, Any], expected: GumbelSearchOutput) -> None:
    np.testing.assert_array_equal(out[Columns.ACTIONS], expected.action)
    np.testing.assert_array_equal(out["visit_counts"], expected.visit_counts)
    np.testing.assert_allclose(out["mcts_policy"], expected.improved_policy, atol=1e-6)
    np.testing.assert_allclose(out["root_value"], expected.root_values, atol=1e-6)


def test_exploration_plays_the_search_action_with_gumbel_noise_from_each_slots_stream():
    module = build_module()
    key = (4, 1, 2)
    module.set_random_streams(key)
    obs = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (5, OBS_DIM)).astype(np.float32))
    streams = [np.random.default_rng([*key, i]) for i in range(5)]
    for _ in range(2):  # the second step goes on with the same streams
        gumbel = np.stack([g.gumbel(size=NUM_ACTIONS) for g in streams]) * GUMBEL["gumbel_scale"]
        expected = direct_gumbel_search(module.network, obs, module.mcts_config,
                                        gumbel.astype(np.float32))
        out = module.forward_exploration({Columns.OBS: obs})
        assert_acting_matches(out, expected)
        assert out["visit_counts"].sum(axis=1).tolist() == [TINY["num_simulations"]] * 5
    # The noise matters: a greedy search of these roots differs somewhere.
    zero = direct_gumbel_search(module.network, obs, module.mcts_config,
                                np.zeros((5, NUM_ACTIONS), np.float32))
    assert not np.array_equal(zero.visit_counts, expected.visit_counts)


def test_greedy_acting_uses_no_noise_and_draws_nothing():
    module = build_module()
    module.set_random_streams((4, 1, 2))
    obs = torch.from_numpy(np.random.default_rng(1).uniform(-1, 1, (5, OBS_DIM)).astype(np.float32))
    first = module.forward_inference({Columns.OBS: obs})
    second = module.forward_inference({Columns.OBS: obs})
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)
    expected = direct_gumbel_search(module.network, obs, module.mcts_config,
                                    np.zeros((5, NUM_ACTIONS), np.float32))
    assert_acting_matches(first, expected)
    # Greedy steps took nothing from the acting streams: exploration starts where a fresh one does.
    fresh = build_module()
    fresh.set_random_streams((4, 1, 2))
    explored = module.forward_exploration({Columns.OBS: obs})
    np.testing.assert_array_equal(explored[Columns.ACTIONS],
                                  fresh.forward_exploration({Columns.OBS: obs})[Columns.ACTIONS])


def make_network(seed: int) -> BarlowZeroNetwork:
    net = plain_vector_network(OBS_DIM, NUM_ACTIONS)
    perturb(net, seed)
    return net.eval()


@pytest.mark.parametrize("reanalyze_noise", [False, True])
def test_reanalyzed_policy_targets_are_the_improved_policy_of_a_direct_search(reanalyze_noise):
    # Frames of OBS_DIM / 2: two stacked frames make one observation.
    config = BarlowZeroConfig().training(
        **GUMBEL, num_simulations=6, num_unroll_steps=3, td_steps=2, stacked_observations=2,
        lstm_horizon_len=2, discount=0.9, batch_size=8, history_length=10,
        revisit_policy_search_rate=0.7, training_steps=100, reanalyze_noise=reanalyze_noise)
    rng = np.random.default_rng(0)
    buffer = GameSegmentReplayBuffer(capacity=1000, history_length=10, stacked_observations=2,
                                     num_unroll_steps=3, td_steps=2, seed=0)
    for episode, length in enumerate([23, 9, 31]):
        policy = rng.random((length, NUM_ACTIONS)).astype(np.float32)
        buffer.add_episode_chunk(
            episode_id=str(episode),
            observations=rng.normal(size=(length + 1, OBS_DIM // 2)).astype(np.float32),
            actions=rng.integers(0, NUM_ACTIONS, length),
            rewards=rng.integers(0, 2, length).astype(np.float32),
            mcts_policy=policy / policy.sum(1, keepdims=True),
            root_values=rng.normal(size=length).astype(np.float32),
            terminated=True, truncated=False, collected_at=0)
    windows = buffer.sample(8, np.random.default_rng(3))
    target = make_network(seed=1)
    reanalyzer = Reanalyzer(make_network(seed=2), config, seed=11)
    reanalyzer.set_weights(target.state_dict())
    batch = reanalyzer.make_batch(windows, learner_step=0, batch_index=7)

    # Batch 7's draws, in order: which samples are re-searched, then (with reanalyze_noise)
    # the roots' Gumbel noise; the Gumbel search has no tie seed.
    draws = np.random.default_rng([11, REANALYZE_STREAM, 7])
    revisit = draws.random(8) < 0.7
    real = batch["policy_mask"] > 0
    b_idx, k_idx = np.nonzero(revisit[:, None] & real)
    assert 0 < revisit.sum() < 8
    gumbel = np.zeros((len(b_idx), NUM_ACTIONS), np.float32)
    if reanalyze_noise:
        gumbel = (draws.gumbel(size=gumbel.shape) * GUMBEL["gumbel_scale"]).astype(np.float32)
    obs = torch.from_numpy(np.stack([np.concatenate(windows.frames[b, k:k + 2])
                                     for b, k in zip(b_idx, k_idx, strict=True)]))
    expected = direct_gumbel_search(target, obs, reanalyzer.mcts_config, gumbel)
    np.testing.assert_allclose(batch["target_policy"][b_idx, k_idx], expected.improved_policy,
                               atol=1e-6)
    # Samples not re-searched keep their stored policy.
    kept = ~revisit
    np.testing.assert_array_equal(batch["target_policy"][kept], windows.policies[kept])


@pytest.mark.parametrize("key, value", [
    ("search_algorithm", "mcts"), ("search_algorithm", "Gumbel"), ("search_algorithm", None),
    ("max_num_considered_actions", 0), ("max_num_considered_actions", 2.0),
    ("max_num_considered_actions", True), ("gumbel_scale", -0.1), ("gumbel_scale", "1"),
    ("value_scale", float("nan")), ("value_scale", -1.0), ("maxvisit_init", float("inf")),
    ("maxvisit_init", -5), ("gumbel_q_normalization", "global"),
    ("gumbel_q_normalization", None),
])
def test_bad_gumbel_settings_are_refused_naming_the_key(key, value):
    config = BarlowZeroConfig().environment("CartPole-v1").training(**{key: value})
    with pytest.raises(ValueError, match=f"`{key}`"):
        config.validate()


@pytest.mark.parametrize("search, key, value", [
    # Gumbel acting plays the search's action: a visit temperature would be ignored.
    ("gumbel", "fixed_temperature", 0.25), ("gumbel", "dirichlet_alpha", 0.1),
    ("gumbel", "root_exploration_fraction", 0.5),
    ("gumbel", "pb_c_base", 1000), ("gumbel", "pb_c_init", 2.0), ("gumbel", "value_delta_max", 0.1),
    ("puct", "max_num_considered_actions", 4), ("puct", "gumbel_scale", 0.5),
    ("puct", "value_scale", 0.2), ("puct", "maxvisit_init", 10.0),
    ("puct", "gumbel_q_normalization", "tree"),
])
def test_a_setting_of_the_other_search_is_refused_not_ignored(search, key, value):
    config = BarlowZeroConfig().environment("CartPole-v1").training(search_algorithm=search,
                                                                    **{key: value})
    with pytest.raises(ValueError, match=f"`{key}`={value!r}.*search_algorithm='{search}'"):
        config.validate()
    BarlowZeroConfig().environment("CartPole-v1").training(**GUMBEL).validate()
    # The same value is taken by the search that reads it.
    own = "puct" if search == "gumbel" else "gumbel"
    BarlowZeroConfig().environment("CartPole-v1").training(search_algorithm=own,
                                                           **{key: value}).validate()


def test_value_delta_max_is_taken_by_gumbel_with_the_trees_normalization():
    cartpole = BarlowZeroConfig().environment("CartPole-v1")
    cartpole.copy(copy_frozen=False).training(
        **GUMBEL, gumbel_q_normalization="tree", value_delta_max=0.1).validate()
    with pytest.raises(ValueError, match="`value_delta_max`=0.1.*search_algorithm='gumbel'"):
        cartpole.copy(copy_frozen=False).training(
            **GUMBEL, gumbel_q_normalization="node", value_delta_max=0.1).validate()


@pytest.mark.parametrize("normalization", ["node", "tree"])
def test_acting_searches_with_the_configs_q_normalization(normalization):
    # A module with the setting acts as the plain search with it (and so as the tree mode's
    # reference, tests/test_gumbel_mcts.py); the two settings act differently on these roots.
    module = build_module(gumbel_q_normalization=normalization, value_delta_max=0.5)
    assert module.gumbel_settings.q_normalization == normalization
    obs = torch.from_numpy(np.random.default_rng(3).uniform(-1, 1, (6, OBS_DIM)).astype(np.float32))
    cfg = module.mcts_config
    assert cfg.value_delta_max == 0.5
    zero = np.zeros((6, NUM_ACTIONS), np.float32)
    searches = {}
    with torch.no_grad():
        for mode in ("node", "tree"):
            root, recurrent_fn = plain_recurrent_fn(module.network, obs, cfg.lstm_horizon_len)
            searches[mode] = run_gumbel_mcts(
                root.policy_logits.numpy(), root.value.numpy(), recurrent_fn, cfg, zero,
                max_num_considered_actions=GUMBEL["max_num_considered_actions"],
                value_scale=GUMBEL["value_scale"], maxvisit_init=GUMBEL["maxvisit_init"],
                q_normalization=mode)
    assert not np.allclose(searches["node"].improved_policy, searches["tree"].improved_policy)
    assert_acting_matches(module.forward_inference({Columns.OBS: obs}), searches[normalization])


def test_serve_answers_with_the_real_visit_counts_and_the_improved_policy(tmp_path):
    from rllib_barlowzero.serve import BarlowZeroDeployment

    module = build_module()
    module.save_to_path(str(tmp_path / "module"))
    threads = torch.get_num_threads()
    try:
        deployment = BarlowZeroDeployment.func_or_class(str(tmp_path / "module"))
    finally:
        torch.set_num_threads(threads)
    assert deployment.health()["search_algorithm"] == "gumbel"
    obs = np.random.default_rng(2).uniform(-1, 1, (3, OBS_DIM)).astype(np.float32)
    answers = deployment.act(obs)
    expected = direct_gumbel_search(module.network, torch.from_numpy(obs), module.mcts_config,
                                    np.zeros((3, NUM_ACTIONS), np.float32))
    for i, answer in enumerate(answers):
        assert set(answer) == {"action", "visit_counts", "root_value", "improved_policy"}
        assert answer["action"] == int(expected.action[i])
        assert answer["visit_counts"] == expected.visit_counts[i].tolist()
        np.testing.assert_allclose(answer["improved_policy"], expected.improved_policy[i],
                                   atol=1e-6)
        assert answer["root_value"] == pytest.approx(float(expected.root_values[i]), abs=1e-6)


@pytest.mark.usefixtures("ray_session")
def test_a_tiny_gumbel_run_trains_and_evaluates():
    algo = tiny_cartpole_config(search_algorithm="gumbel", num_simulations=4,
                                num_steps_sampled_before_learning_starts=50).build_algo()
    try:
        results = [algo.train() for _ in range(2)]
        last = results[-1]
        assert last["training_steps_done"] > 0
        assert np.isfinite(last["learners"]["default_policy"]["policy_loss"])
        # Visit entropy (from the real visit counts) over 2 actions lies in [0, log 2].
        assert 0.0 <= last["search"]["visit_entropy_mean"] <= np.log(2) + 1e-6
        # Episodes carry the improved policy (the stored policy target) and the visit counts.
        for episode in algo.env_runner.sample(num_timesteps=8, explore=True):
            if len(episode):
                policy = np.asarray(episode.get_extra_model_outputs("mcts_policy"))
                visits = np.asarray(episode.get_extra_model_outputs("visit_counts"))
                np.testing.assert_allclose(policy.sum(axis=1), 1.0, atol=1e-5)
                assert visits.shape == (len(episode), 2) and (visits.sum(axis=1) == 4).all()
        evaluation = algo.evaluate()["env_runners"]
        assert evaluation["num_episodes"] >= 4
    finally:
        algo.stop()
