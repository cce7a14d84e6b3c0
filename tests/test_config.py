"""BarlowZeroConfig: the paper's Table 2 defaults and validate()'s refusals."""

import gymnasium as gym
import numpy as np
import pytest

from rllib_barlowzero import BarlowZeroConfig
from rllib_barlowzero.barlowzero import TRAINING_DEFAULTS
from rllib_barlowzero.torch.barlowzero_torch_rl_module import check_spaces

# The paper's Table 2, typed in from the paper (not from our defaults table).
PAPER_TABLE_2 = {
    "auto_td_steps_ratio": 0.3,
    "max_moves": 3000,
    "history_length": 400,
    "discount": 0.997**4,
    "training_steps": 120000,
    "batch_size": 64,
    "num_unroll_steps": 5,
    "td_steps": 5,
    "stacked_observations": 4,
    "lstm_hidden_size": 512,
    "lstm_horizon_len": 5,
    "reward_loss_coeff": 1,
    "value_loss_coeff": 0.25,
    "policy_loss_coeff": 10,
    "consistency_loss_coeff": 0.001,
    "weight_decay": 0.0005,
    "momentum": 0.9,
    "lr": 0.01,
    "priority_prob_alpha": 0,
    "priority_prob_beta": 0.4,
    "prioritized_replay_eps": 1e-06,
    "proj_hid": 1024,
    "proj_out": 1024,
    "pred_hid": 512,
    "pred_out": 1024,
    "bn_mt": 0.1,
    "blocks": 1,
    "channels": 64,
    "reduced_channels_reward": 16,
    "reduced_channels_value": 16,
    "reduced_channels_policy": 16,
    "resnet_fc_reward_layers": [32],
    "resnet_fc_value_layers": [32],
    "resnet_fc_policy_layers": [32],
    "augmentation": ["shift", "intensity"],
    "revisit_policy_search_rate": 0.99,
    "optimizer": "sgd",
    "lr_schedule": "cosine",
    "barlow_lambda": 0.0051,
    "num_simulations": 50,
    "dirichlet_alpha": 0.3,
    "root_exploration_fraction": 0.25,
    "target_update_interval": 200,
    "consistency_loss": "barlow",
}


def test_defaults_are_the_papers_table_2():
    config = BarlowZeroConfig()
    for key, value in PAPER_TABLE_2.items():
        assert getattr(config, key) == pytest.approx(value), key
    assert config.gamma == pytest.approx(0.997**4)


def test_training_sets_every_table_key():
    config = BarlowZeroConfig().training(lr=0.02, batch_size=32, consistency_loss="simsiam",
                                         proj_out=2048, discount=0.99)
    assert (config.lr, config.batch_size, config.consistency_loss, config.proj_out) == (
        0.02, 32, "simsiam", 2048)
    assert config.gamma == 0.99 and config.train_batch_size == 32
    for key in TRAINING_DEFAULTS:
        assert key in BarlowZeroConfig.training.__code__.co_varnames, key


def test_lookback_follows_stacked_observations():
    config = BarlowZeroConfig().training(stacked_observations=6)
    assert config.episode_lookback_horizon == 5
    config.update_from_dict({"stacked_observations": 2})
    assert config.episode_lookback_horizon == 1


def _validate(**training):
    BarlowZeroConfig().environment("CartPole-v1").training(**training).validate()


def test_defaults_validate():
    _validate()


@pytest.mark.parametrize(
    "key,value",
    [
        ("batch_size", 0),
        ("num_simulations", 0),
        ("num_unroll_steps", -1),
        ("td_steps", 0),
        ("channels", 0),
        ("history_length", 2.5),
        ("discount", 1.5),
        ("revisit_policy_search_rate", -0.1),
        ("policy_loss_coeff", -1.0),
        ("dirichlet_alpha", 0.0),
        ("replay_ratio", 0),
        ("lr", -0.01),
        ("lr", float("nan")),
        ("consistency_loss", "byol"),
        ("optimizer", "rmsprop"),
        ("lr_schedule", "linear"),
        ("augmentation", ["shift", "rotate"]),
        ("resnet_fc_value_layers", [32, 0]),
        ("blocks", -1),
        ("priority_prob_beta", 2.0),
    ],
)
def test_validate_refuses_bad_values_naming_the_key(key, value):
    with pytest.raises(ValueError, match=f"`{key}`"):
        _validate(**{key: value})


def test_barlow_needs_two_rows():
    with pytest.raises(ValueError, match="batch_size"):
        _validate(batch_size=1)
    _validate(batch_size=1, consistency_loss="none")


def test_warmup_cannot_exceed_capacity():
    with pytest.raises(ValueError, match="num_steps_sampled_before_learning_starts"):
        _validate(replay_capacity=100, num_steps_sampled_before_learning_starts=200)


def test_unknown_consistency_loss_lists_the_known_ones():
    with pytest.raises(ValueError, match="barlow.*simsiam.*none"):
        _validate(consistency_loss="simclr")


def test_check_spaces():
    check_spaces(gym.spaces.Box(-1, 1, (4,), np.float32), gym.spaces.Discrete(2))
    check_spaces(gym.spaces.Box(0, 255, (12, 96, 96), np.uint8), gym.spaces.Discrete(4))
    with pytest.raises(ValueError, match="Discrete action space"):
        check_spaces(gym.spaces.Box(-1, 1, (4,)), gym.spaces.Box(-1, 1, (2,)))
    with pytest.raises(ValueError, match="uint8"):
        check_spaces(gym.spaces.Box(0, 1, (3, 8, 8), np.float32), gym.spaces.Discrete(2))
    with pytest.raises(ValueError, match="Box observation space"):
        check_spaces(gym.spaces.Discrete(3), gym.spaces.Discrete(2))
    with pytest.raises(ValueError, match="Box observation space"):
        check_spaces(gym.spaces.Box(0, 1, (3, 8)), gym.spaces.Discrete(2))
