"""Tiny BarlowZero configurations shared by the end-to-end tests (seconds per iteration on CPU)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from rllib_barlowzero import BarlowZeroConfig
from rllib_barlowzero.torch.networks import BarlowZeroNetwork

# A network small enough for many short end-to-end runs.
TINY_NETWORK = dict(
    channels=16, blocks=1, reduced_channels_reward=4, reduced_channels_value=4,
    reduced_channels_policy=4, resnet_fc_reward_layers=[16], resnet_fc_value_layers=[16],
    resnet_fc_policy_layers=[16], lstm_hidden_size=32, support_size=10, proj_hid=32, proj_out=32,
    pred_hid=16, pred_out=32, mlp_hidden_layers=[32],
)
# Smaller still, for tests that build modules directly or play many short games; image tests use it
# as is, vector tests add `mlp_hidden_layers=[16]`.
MICRO_NETWORK = dict(
    channels=8, blocks=1, reduced_channels_reward=2, reduced_channels_value=2,
    reduced_channels_policy=2, resnet_fc_reward_layers=[8], resnet_fc_value_layers=[8],
    resnet_fc_policy_layers=[8], lstm_hidden_size=16, support_size=5, proj_hid=16, proj_out=16,
    pred_hid=8, pred_out=16,
)
# Breakout through the whole Atari pipeline: 3 simulations, batches of 4, games capped by the test.
MICRO_ATARI = dict(
    MICRO_NETWORK, support_size=10, proj_hid=32, proj_out=32, pred_hid=16, pred_out=32,
    num_simulations=3, batch_size=4, history_length=20,
)
# CartPole training: 100 env steps per iteration, 10 updates per iteration once learning starts.
TINY_CARTPOLE = dict(
    TINY_NETWORK, num_simulations=8, batch_size=16, history_length=50,
    num_steps_sampled_before_learning_starts=100, replay_ratio=0.1, training_steps=1000,
    stacked_observations=2, target_update_interval=5,
)


def tiny_cartpole_config(**training) -> BarlowZeroConfig:
    """CartPole-v1, one local env runner with 4 envs, greedy evaluation over 4 games, seed 1."""
    return (
        BarlowZeroConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=0, num_envs_per_env_runner=4, rollout_fragment_length=25)
        .training(**{**TINY_CARTPOLE, **training})
        .evaluation(evaluation_duration=4, evaluation_num_env_runners=0)
        .debugging(seed=1)
    )


def plain_vector_network(obs_dim: int, num_actions: int) -> BarlowZeroNetwork:
    """A 4-channel MLP network without consistency heads, for searches checked by hand."""
    return BarlowZeroNetwork(
        (obs_dim,), num_actions, channels=4, lstm_hidden_size=8, support_size=5,
        resnet_fc_reward_layers=(8,), resnet_fc_value_layers=(8,), resnet_fc_policy_layers=(8,),
        reduced_channels_reward=2, reduced_channels_value=2, reduced_channels_policy=2,
        mlp_hidden_layers=(8,), consistency_loss="none")


def plain_recurrent_fn(net: torch.nn.Module, obs: torch.Tensor,
                       lstm_horizon_len: int) -> tuple[object, Callable]:
    """The root inference of `obs` (B, *obs_shape) and a search `recurrent_fn` written out plainly.

    One list entry of hidden and LSTM states per simulation (no tree-indexed storage), the LSTM
    state zeroed where the parent's depth is a multiple of `lstm_horizon_len`. Call under
    `torch.no_grad()`.
    """
    root = net.initial_inference(obs)
    states, lstm = [root.state], [net.initial_lstm_state(obs.shape[0], obs.device)]

    def recurrent_fn(parent_ids, actions, depths):
        rows = range(obs.shape[0])
        state = torch.stack([states[p][b] for b, p in zip(rows, parent_ids, strict=True)])
        h = torch.stack([lstm[p][0][0, b] for b, p in zip(rows, parent_ids, strict=True)])
        c = torch.stack([lstm[p][1][0, b] for b, p in zip(rows, parent_ids, strict=True)])
        parent_depth = np.asarray(depths) - 1
        reset = torch.as_tensor(parent_depth % lstm_horizon_len == 0)[:, None]
        h, c = torch.where(reset, 0.0, h), torch.where(reset, 0.0, c)
        out = net.recurrent_inference(state, (h[None], c[None]), torch.as_tensor(actions))
        states.append(out.state)
        lstm.append(out.lstm_state)
        return out.value_prefix.numpy(), out.value.numpy(), out.policy_logits.numpy()

    return root, recurrent_fn
