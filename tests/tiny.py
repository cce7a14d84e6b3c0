"""Tiny BarlowZero configurations shared by the end-to-end tests (seconds per iteration on CPU)."""

from __future__ import annotations

from rllib_barlowzero import BarlowZeroConfig

# A network small enough for many short end-to-end runs.
TINY_NETWORK = dict(
    channels=16, blocks=1, reduced_channels_reward=4, reduced_channels_value=4,
    reduced_channels_policy=4, resnet_fc_reward_layers=[16], resnet_fc_value_layers=[16],
    resnet_fc_policy_layers=[16], lstm_hidden_size=32, support_size=10, proj_hid=32, proj_out=32,
    pred_hid=16, pred_out=32, mlp_hidden_layers=[32],
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
