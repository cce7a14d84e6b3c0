"""Reanalyze: targets from the target model, checked against direct computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cython_mcts import MCTSConfig, run_mcts
from rllib_barlowzero import BarlowZeroConfig
from rllib_barlowzero.reanalyze import Reanalyzer
from rllib_barlowzero.replay_buffer import GameSegmentReplayBuffer
from rllib_barlowzero.streams import REANALYZE_STREAM
from rllib_barlowzero.targets import off_policy_td_steps
from rllib_barlowzero.torch.networks import BarlowZeroNetwork

try:  # tests/ on sys.path (pytest's default import of test modules)
    from tiny import plain_recurrent_fn, plain_vector_network
except ImportError:  # tests/ imported as a package
    from tests.tiny import plain_recurrent_fn, plain_vector_network

NUM_ACTIONS = 3
OBS_DIM = 4


def make_config(**training) -> BarlowZeroConfig:
    defaults = dict(num_simulations=6, num_unroll_steps=3, td_steps=2, stacked_observations=2,
                    lstm_horizon_len=2, discount=0.9, batch_size=8, history_length=10,
                    revisit_policy_search_rate=1.0, training_steps=100, auto_td_steps_ratio=0.3)
    return BarlowZeroConfig().training(**{**defaults, **training})


def make_network(seed: int = 0) -> BarlowZeroNetwork:
    torch.manual_seed(seed)
    net = plain_vector_network(OBS_DIM * 2, NUM_ACTIONS)
    # Non-zero heads so that values and priors differ between nodes.
    for p in net.parameters():
        p.data.normal_(0, 0.5)
    return net.eval()


def filled_buffer(config: BarlowZeroConfig, seed: int = 0) -> GameSegmentReplayBuffer:
    rng = np.random.default_rng(seed)
    buffer = GameSegmentReplayBuffer(
        capacity=1000, history_length=config.history_length,
        stacked_observations=config.stacked_observations,
        num_unroll_steps=config.num_unroll_steps, td_steps=config.td_steps, seed=seed)
    for episode, length in enumerate([23, 9, 31]):
        policy = rng.random((length, NUM_ACTIONS)).astype(np.float32)
        buffer.add_episode_chunk(
            episode_id=str(episode),
            observations=rng.normal(size=(length + 1, OBS_DIM)).astype(np.float32),
            actions=rng.integers(0, NUM_ACTIONS, length),
            rewards=rng.integers(0, 2, length).astype(np.float32),
            mcts_policy=policy / policy.sum(1, keepdims=True),
            root_values=rng.normal(size=length).astype(np.float32),
            terminated=episode != 1, truncated=episode == 1, collected_at=episode * 10)
    return buffer


def direct_search(net: BarlowZeroNetwork, obs: torch.Tensor, cfg: MCTSConfig,
                  noise: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """The search written out plainly: one list entry of states per simulation."""
    with torch.no_grad():
        root, recurrent_fn = plain_recurrent_fn(net, obs, cfg.lstm_horizon_len)
        result = run_mcts(root.policy_logits.numpy(), root.value.numpy(), recurrent_fn, cfg,
                          noise=noise, seed=seed)
    return result.visit_counts


@pytest.mark.parametrize("reanalyze_noise", [False, True])
def test_reanalyzed_policy_equals_a_direct_search_with_the_target_model(reanalyze_noise):
    config = make_config(reanalyze_noise=reanalyze_noise)
    target = make_network(seed=1)
    reanalyzer = Reanalyzer(make_network(seed=2), config, seed=11)
    reanalyzer.set_weights(target.state_dict())
    windows = filled_buffer(config).sample(8, np.random.default_rng(3))
    batch = reanalyzer.make_batch(windows, learner_step=0, batch_index=7)

    # Batch 7's draws, in the documented order, from its own generator: which samples are
    # re-searched, the roots' Dirichlet noise (when on), the search's tie seed.
    rng = np.random.default_rng([11, REANALYZE_STREAM, 7])
    revisit = rng.random(8) < config.revisit_policy_search_rate
    real = batch["policy_mask"] > 0  # [B, K+1]
    b_idx, k_idx = np.nonzero(revisit[:, None] & real)
    noise = None
    if reanalyze_noise:
        noise = rng.dirichlet(np.full(NUM_ACTIONS, config.dirichlet_alpha), size=len(b_idx))
        noise = noise.astype(np.float32)
    seed = int(rng.integers(2**63))
    # Step t+k stacks window frames k and k+1 (written out by hand).
    obs = torch.from_numpy(np.stack([np.concatenate(windows.frames[b, k:k + 2])
                                     for b, k in zip(b_idx, k_idx, strict=True)]))
    visits = direct_search(target, obs, reanalyzer.mcts_config, noise, seed).astype(np.float32)
    expected = visits / visits.sum(1, keepdims=True)
    np.testing.assert_allclose(batch["target_policy"][b_idx, k_idx], expected, atol=1e-6)
    # Past the episode's end the policy target is empty (and masked).
    assert np.all(batch["target_policy"][~real] == 0)


def test_reanalyze_randomness_comes_from_the_seed_and_the_batch_index():
    config = make_config()
    net = make_network(seed=1)
    windows = filled_buffer(config).sample(8, np.random.default_rng(3))

    def targets(seed: int, batch_index: int) -> np.ndarray:
        reanalyzer = Reanalyzer(net, config, seed=seed)
        return reanalyzer.make_batch(windows, learner_step=0, batch_index=batch_index)[
            "target_policy"]

    np.testing.assert_array_equal(targets(1, 4), targets(1, 4))  # a rerun, a new reanalyzer
    assert not np.array_equal(targets(1, 4), targets(2, 4))  # another seed: other noise
    assert not np.array_equal(targets(1, 4), targets(1, 5))  # another batch: other noise
    no_noise = make_config(reanalyze_noise=False)
    quiet = [Reanalyzer(net, no_noise, seed=s).make_batch(windows, 0, 4)["target_policy"]
             for s in (1, 2)]
    np.testing.assert_allclose(quiet[0], quiet[1])  # without noise the seed only breaks ties


def test_no_revisit_keeps_the_stored_policies():
    config = make_config(revisit_policy_search_rate=0.0)
    reanalyzer = Reanalyzer(make_network(), config, seed=0)
    windows = filled_buffer(config).sample(8, np.random.default_rng(0))
    batch = reanalyzer.make_batch(windows, learner_step=0, batch_index=0)
    np.testing.assert_array_equal(batch["target_policy"], windows.policies)


def test_value_targets_bootstrap_from_the_target_model():
    config = make_config(revisit_policy_search_rate=0.0)
    target = make_network(seed=4)
    reanalyzer = Reanalyzer(make_network(seed=5), config, seed=0)
    reanalyzer.set_weights(target.state_dict())
    windows = filled_buffer(config).sample(8, np.random.default_rng(1))
    step = 0
    batch = reanalyzer.make_batch(windows, learner_step=step, batch_index=0)
    n = off_policy_td_steps(step, windows.collected_at, config.td_steps,
                            config.auto_td_steps_ratio, config.training_steps)
    gamma = config.discount
    for b in range(8):
        steps_left, terminated = int(windows.steps_left[b]), bool(windows.terminated[b])
        for k in range(config.num_unroll_steps + 1):
            if k >= steps_left and not terminated:
                continue  # past a truncated end: masked
            horizon = k + int(n[b])
            rewards = windows.rewards[b, k:min(horizon, steps_left)]
            value = float(np.sum(rewards * gamma ** np.arange(len(rewards))))
            if not (terminated and horizon >= steps_left):  # no bootstrap past a terminal
                j = min(horizon, steps_left)
                obs = torch.from_numpy(np.concatenate(windows.frames[b, j:j + 2])[None])
                with torch.no_grad():
                    bootstrap = float(target.initial_inference(obs).value[0])
                value += gamma ** (j - k) * bootstrap
            assert batch["target_value"][b, k] == pytest.approx(value, rel=1e-4, abs=1e-4), (b, k)


def test_old_data_gets_fewer_td_steps():
    # EfficientZero: n = clip(td_steps - age // (ratio * training_steps), 1, td_steps).
    n = off_policy_td_steps(np.int64(100), np.array([100, 71, 70, 40, 0]), 5, 0.1, 300)
    np.testing.assert_array_equal(n, [5, 5, 4, 3, 2])
