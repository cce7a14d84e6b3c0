"""Every setting reaches the code that uses it, with the config's value, by one route.

A config with a non-default value for every training key is built into an algorithm; the module,
the learner, the reanalyzer and the algorithm's loop then read their settings through recorders,
and each value read must be the config's. Every key of `TRAINING_DEFAULTS` must be read by one of
them (or, for the keys used once at setup, be visible in what setup built): a setting that is
accepted but read by nobody fails here.
"""

from __future__ import annotations

import os
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import ray
import torch
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns

from rllib_barlowzero import BarlowZeroConfig
from rllib_barlowzero.barlowzero import GUMBEL_ONLY_KEYS, PUCT_ONLY_KEYS, TRAINING_DEFAULTS
from rllib_barlowzero.reanalyze import Reanalyzer
from rllib_barlowzero.torch import search as search_module
from rllib_barlowzero.torch.barlowzero_torch_learner import learning_rate

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

# A value unlike the default for every key a tiny CartPole run can take.
NON_DEFAULT = dict(
    auto_td_steps_ratio=0.35, max_moves=123, history_length=47, discount=0.95,
    training_steps=997, batch_size=14, num_unroll_steps=3, td_steps=4, stacked_observations=2,
    lstm_hidden_size=24, lstm_horizon_len=2, reward_loss_coeff=0.9, value_loss_coeff=0.3,
    policy_loss_coeff=1.5, consistency_loss_coeff=0.002, optimizer="sgd", lr_schedule="step",
    weight_decay=3e-4, momentum=0.8, priority_prob_alpha=0.5, priority_prob_beta=0.3,
    prioritized_replay_eps=2e-6, proj_hid=20, proj_out=18, pred_hid=12, pred_out=18, bn_mt=0.05,
    blocks=2, channels=12, reduced_channels_reward=3, reduced_channels_value=5,
    reduced_channels_policy=6, resnet_fc_reward_layers=[10], resnet_fc_value_layers=[11],
    resnet_fc_policy_layers=[13], augmentation=["shift"], revisit_policy_search_rate=0.8,
    consistency_loss="barlow", barlow_lambda=0.004, num_simulations=6, dirichlet_alpha=0.2,
    root_exploration_fraction=0.3, pb_c_base=19000, pb_c_init=1.2, value_delta_max=0.02,
    support_size=9, state_normalization=True, flush_denormal=False, reanalyze_noise=False,
    mlp_hidden_layers=[30],
    fixed_temperature=0.7,
    # The run searches with pUCT (fixed_temperature is pUCT's), with the Gumbel settings at their
    # defaults (pUCT refuses others); these are checked on a Gumbel module and reanalyzer built
    # from the same config with the pUCT settings at their defaults instead (see below).
    search_algorithm="puct", max_num_considered_actions=3, gumbel_scale=0.6, value_scale=0.2,
    maxvisit_init=40.0, gumbel_q_normalization="tree",
    target_update_interval=3, lr_warmup_steps=7, replay_capacity=5000, replay_ratio=0.15,
    num_steps_sampled_before_learning_starts=90, total_env_steps=99_000,
    num_reanalyze_workers=1, num_cpus_per_reanalyze_worker=0.5,
    custom_resources_per_reanalyze_worker={"reanalyze_slot": 1}, reanalyze_queue_size=2,
    # These two need a GPU; on this CPU they keep their defaults (still read: see below).
    num_gpus_per_reanalyze_worker=0, mixed_precision=False,
)
NEEDS_A_GPU = {"num_gpus_per_reanalyze_worker", "mixed_precision"}
# What the pUCT run and the Gumbel module are built with: each search's own settings non-default.
PUCT_RUN = {**NON_DEFAULT, **{k: TRAINING_DEFAULTS[k] for k in GUMBEL_ONLY_KEYS}}
GUMBEL_RUN = {**NON_DEFAULT, **{k: TRAINING_DEFAULTS[k] for k in PUCT_ONLY_KEYS},
              "search_algorithm": "gumbel"}

# Keys read once, at setup, to build the replay buffer and the env: checked on what was built.
SETUP_KEYS = {
    "replay_capacity": "capacity", "history_length": "history_length",
    "stacked_observations": "stacked_observations", "num_unroll_steps": "num_unroll_steps",
    "td_steps": "td_steps", "priority_prob_alpha": "priority_prob_alpha",
    "priority_prob_beta": "priority_prob_beta",
    "prioritized_replay_eps": "prioritized_replay_eps",
}


class Recorder:
    """Forwards attribute reads to `target` and records (name -> value) of each."""

    def __init__(self, target: Any) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "reads", {})

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        self.reads[name] = value
        return value

    def get_config_for_module(self, module_id: str) -> Recorder:
        return self


class RecordingDict(dict):
    """A dict that records the keys read from it."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.reads: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        value = super().__getitem__(key)
        self.reads[key] = value
        return value

    def get(self, key: str, default: Any = None) -> Any:
        if key in self:
            return self[key]
        return default


def assert_delivered(reads: dict[str, Any], who: str,
                     config: dict[str, Any] = PUCT_RUN) -> set[str]:
    """Every training key `who` read holds `config`'s value; returns the keys read with a
    non-default value."""
    ours = {k: v for k, v in reads.items() if k in TRAINING_DEFAULTS}
    for key, value in ours.items():
        expected = config[key]
        if isinstance(expected, list):
            assert list(value) == expected, (who, key)
        else:
            assert value == pytest.approx(expected), (who, key)
    return {k for k in ours if config[k] == NON_DEFAULT[k]}


@pytest.fixture(scope="module")
def algo():
    assert set(NON_DEFAULT) == set(TRAINING_DEFAULTS)
    for key, value in NON_DEFAULT.items():
        assert value != TRAINING_DEFAULTS[key] or key in {"optimizer", "consistency_loss",
                                                          "search_algorithm", *NEEDS_A_GPU}, key
    ray.init(num_cpus=2, resources={"reanalyze_slot": 1}, include_dashboard=False,
             log_to_driver=False)
    config = (
        BarlowZeroConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=0, num_envs_per_env_runner=3, rollout_fragment_length=20)
        .training(lr=0.03, **PUCT_RUN)
        .evaluation(evaluation_duration=2, evaluation_num_env_runners=0)
        .debugging(seed=3)
    )
    algo = config.build_algo()
    yield algo
    algo.stop()
    ray.shutdown()


def test_every_setting_reaches_its_reader_with_the_configs_value(algo, monkeypatch):
    read: set[str] = set()

    # The algorithm's loop (sampling, replay ratio, updates, target refreshes).
    real_config = algo.config
    loop = Recorder(real_config)
    algo.config = loop
    try:
        for _ in range(6):
            algo.training_step()
    finally:
        algo.config = real_config
    assert algo._training_steps_done > NON_DEFAULT["target_update_interval"]
    read |= assert_delivered(loop.reads, "algorithm")

    # The reanalyzer, on windows of the real buffer.
    reanalyze_config = Recorder(real_config)
    reanalyzer = Reanalyzer(algo._build_network(), reanalyze_config, seed=0)
    windows = algo.replay_buffer.sample(NON_DEFAULT["batch_size"])
    batch = reanalyzer.make_batch(windows, learner_step=5, batch_index=5)
    read |= assert_delivered(reanalyze_config.reads, "reanalyzer")
    # mcts settings travel through the model config.
    search_cfg = reanalyzer.mcts_config
    assert (search_cfg.num_simulations, search_cfg.pb_c_base, search_cfg.lstm_horizon_len) == (
        6, 19000, 2)

    # The module, built from the config's own model config, acting and unrolling.
    learner = algo.learner_group._learner
    spec = real_config.get_rl_module_spec(spaces=algo.env_runner_group.get_spaces())
    model_config = RecordingDict(spec.model_config)
    spec.model_config = model_config
    module = spec.build()
    obs = torch.as_tensor(batch["obs"])
    module.forward_exploration({Columns.OBS: obs})
    module.forward_inference({Columns.OBS: obs})
    module.train()
    fwd_out = module.forward_train({k: torch.as_tensor(v) for k, v in batch.items()})
    read |= assert_delivered(model_config.reads, "module")

    # The Gumbel search: a module and a reanalyzer of the same config with
    # search_algorithm="gumbel", its settings non-default and pUCT's at their defaults (Gumbel
    # refuses others). Each search must get the config's Gumbel settings, and exploration Gumbel
    # noise times gumbel_scale.
    calls: list[dict[str, Any]] = []
    run_gumbel_mcts = search_module.run_gumbel_mcts

    def recording_run_gumbel_mcts(*args: Any, **kwargs: Any) -> Any:
        calls.append({"config": args[3], "gumbel": np.array(args[4]), **kwargs})
        return run_gumbel_mcts(*args, **kwargs)

    monkeypatch.setattr(search_module, "run_gumbel_mcts", recording_run_gumbel_mcts)
    gumbel_config = real_config.copy(copy_frozen=False).training(**GUMBEL_RUN)
    gumbel_config.validate()
    gumbel_spec = gumbel_config.get_rl_module_spec(spaces=algo.env_runner_group.get_spaces())
    gumbel_model_config = RecordingDict(gumbel_spec.model_config)
    gumbel_spec.model_config = gumbel_model_config
    gumbel_module = gumbel_spec.build()
    gumbel_module.set_random_streams((7,))
    streams = [np.random.default_rng([7, i]) for i in range(obs.shape[0])]
    gumbel_module.forward_exploration({Columns.OBS: obs})
    expected_noise = np.stack([g.gumbel(size=gumbel_module.num_actions) for g in streams])
    expected_noise *= NON_DEFAULT["gumbel_scale"]
    np.testing.assert_allclose(calls[-1]["gumbel"], expected_noise, rtol=1e-6)
    gumbel_module.forward_inference({Columns.OBS: obs})
    assert not calls[-1]["gumbel"].any()
    Reanalyzer(algo._build_network(), gumbel_config, seed=0).make_batch(
        windows, learner_step=5, batch_index=5)
    assert len(calls) == 3
    for call in calls:  # exploration, inference, reanalyze
        assert (call["max_num_considered_actions"], call["value_scale"], call["maxvisit_init"],
                call["q_normalization"], call["config"].num_simulations,
                call["config"].lstm_horizon_len) == (3, 0.2, 40.0, "tree", 6, 2)
    gumbel_reads = {k: v for k, v in gumbel_model_config.reads.items() if k != "search_algorithm"}
    assert gumbel_model_config.reads["search_algorithm"] == "gumbel"
    read |= assert_delivered(gumbel_reads, "gumbel module", GUMBEL_RUN)

    # The learner's loss and schedule.
    learner_config = Recorder(real_config)
    learner.compute_loss_for_module(
        module_id=DEFAULT_MODULE_ID, config=learner_config,
        batch={k: torch.as_tensor(v) for k, v in batch.items()}, fwd_out=fwd_out,
    )
    learning_rate(learner_config, 3)
    read |= assert_delivered(learner_config.reads, "learner")
    optimizer = learner.get_optimizers_for_module(DEFAULT_MODULE_ID)[0][1]
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.SGD)
    assert (group["momentum"], group["weight_decay"]) == (0.8, 3e-4)
    read |= {"optimizer", "momentum", "weight_decay"}

    # Setup: the replay buffer and the env's move cap.
    for key, attribute in SETUP_KEYS.items():
        assert getattr(algo.replay_buffer, attribute) == pytest.approx(NON_DEFAULT[key]), key
    env = algo.env_runner.env.unwrapped.envs[0] if hasattr(algo.env_runner.env, "unwrapped") \
        else None
    caps = []
    while env is not None:
        if isinstance(env, gym.wrappers.TimeLimit):
            caps.append(env._max_episode_steps)
        env = getattr(env, "env", None)
    assert 123 in caps
    read |= set(SETUP_KEYS) | {"max_moves"}

    # Setup: the reanalyze workers and their resources (the actor reads the GPU share).
    queue = algo.reanalyze_queue
    assert queue.num_workers == len(queue.worker_node_ids()) == 1
    assert queue.worker_resources == {"CPU": 0.5, "reanalyze_slot": 1}
    read |= {"num_reanalyze_workers", "num_cpus_per_reanalyze_worker",
             "num_gpus_per_reanalyze_worker", "custom_resources_per_reanalyze_worker"}

    missing = set(TRAINING_DEFAULTS) - read
    assert not missing, f"accepted but read by nobody: {sorted(missing)}"


def test_a_missing_model_key_is_an_error_naming_it(algo):
    spec = algo.config.get_rl_module_spec(spaces=algo.env_runner_group.get_spaces())
    full = dict(spec.model_config)
    for key in ("augmentation", "state_normalization", "dirichlet_alpha"):
        model_config = dict(full)
        del model_config[key]
        spec.model_config = model_config
        with pytest.raises(KeyError, match=key):
            spec.build()


def test_rllib_aliases_are_forwarded_or_refused():
    config = BarlowZeroConfig().training(gamma=0.9, train_batch_size=48)
    assert (config.discount, config.batch_size) == (0.9, 48)
    config = BarlowZeroConfig()
    config.update_from_dict({"gamma": 0.8, "train_batch_size": 24})  # Tune and YAML's route
    assert (config.discount, config.batch_size) == (0.8, 24)
    config.update_from_dict({"discount": 0.7})
    assert config.gamma == 0.7
    with pytest.raises(ValueError, match="`gamma`=0.9 and `discount`=0.8 disagree"):
        BarlowZeroConfig().training(gamma=0.9, discount=0.8)
    with pytest.raises(ValueError, match="train_batch_size"):
        BarlowZeroConfig().training(train_batch_size=32, batch_size=64)
    config = BarlowZeroConfig().environment("CartPole-v1").training(
        train_batch_size_per_learner=32)
    with pytest.raises(ValueError, match="train_batch_size_per_learner"):
        config.validate()


def test_max_moves_has_one_route():
    config = BarlowZeroConfig().environment("CartPole-v1", env_config={"max_moves": 50})
    with pytest.raises(ValueError, match=r"\.training\(max_moves=\.\.\.\)"):
        config.validate()


@pytest.mark.parametrize("schedule", ["cosine", "step", "constant"])
def test_every_schedule_warms_up_linearly(schedule):
    config = BarlowZeroConfig().training(lr=0.2, lr_schedule=schedule, training_steps=12_000,
                                         lr_warmup_steps=1000)
    after = {
        "cosine": lambda s: 0.2 * 0.5 * (1 + np.cos(np.pi * s / 12_000)),
        "step": lambda s: 0.2 if s < 10_000 else 0.02,
        "constant": lambda s: 0.2,
    }[schedule]
    # Ramp by hand: (step + 1) / 1000 of the schedule's value.
    for step in (0, 1, 499, 999):
        assert learning_rate(config, step) == pytest.approx(after(step) * (step + 1) / 1000)
    for step in (1000, 5000, 10_000, 11_999):
        assert learning_rate(config, step) == pytest.approx(after(step))
    assert learning_rate(config, 0) < learning_rate(config, 500) < learning_rate(config, 999)
    no_warmup = config.copy(copy_frozen=False).training(lr_warmup_steps=0)
    assert learning_rate(no_warmup, 0) == pytest.approx(after(0))
