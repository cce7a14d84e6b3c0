"""BarlowZeroConfig: every hyperparameter of the paper's Table 2, with the table's defaults."""

from __future__ import annotations

import math
import time
from typing import Any

import gymnasium as gym
import numpy as np
import ray
import torch
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig, NotProvided
from ray.rllib.core import COMPONENT_LEARNER, COMPONENT_RL_MODULE, DEFAULT_MODULE_ID
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.execution.rollout_ops import synchronous_parallel_sample
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch
from ray.rllib.utils.annotations import override
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    ENV_RUNNER_SAMPLING_TIMER,
    LEARNER_RESULTS,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    SYNCH_WORKER_WEIGHTS_TIMER,
    TIMERS,
)
from ray.tune.execution.placement_groups import PlacementGroupFactory
from ray.tune.registry import register_env

from cython_mcts import Q_NORMALIZATIONS
from rllib_barlowzero.columns import BarlowZeroColumns
from rllib_barlowzero.env.atari import atari_env_creator, is_atari_env_id
from rllib_barlowzero.env.frame_stacking import FrameStackingEnvToModule
from rllib_barlowzero.env.gymnasium_env import make_gym_env
from rllib_barlowzero.env.minatar_envs import is_minatar_env_id, register_minatar_envs
from rllib_barlowzero.env_runner import BarlowZeroEnvRunner
from rllib_barlowzero.reanalyze import Reanalyzer
from rllib_barlowzero.reanalyze_workers import ReanalyzeQueue, reanalyze_worker_resources
from rllib_barlowzero.replay_buffer import GameSegmentReplayBuffer, annealed_beta
from rllib_barlowzero.streams import run_seed
from rllib_barlowzero.tensorboard import TensorBoardCallback
from rllib_barlowzero.torch.augmentations import AUGMENTATIONS
from rllib_barlowzero.torch.losses import CONSISTENCY_LOSSES
from rllib_barlowzero.torch.search import SEARCH_ALGORITHMS

LR_SCHEDULES = ("cosine", "step", "constant")
OPTIMIZERS = ("sgd", "adam")

# Table 2 of the paper (snake_case names, the table's values), plus the search and replay settings
# the paper takes from EfficientZero. Everything here is a `.training(...)` argument.
TRAINING_DEFAULTS: dict[str, Any] = {
    # Table 2
    "auto_td_steps_ratio": 0.3,
    "max_moves": 3000,
    "history_length": 400,
    "discount": 0.997**4,
    "training_steps": 120_000,
    "batch_size": 64,
    "num_unroll_steps": 5,
    "td_steps": 5,
    "stacked_observations": 4,
    "lstm_hidden_size": 512,
    "lstm_horizon_len": 5,
    "reward_loss_coeff": 1.0,
    "value_loss_coeff": 0.25,
    "policy_loss_coeff": 10.0,
    "consistency_loss_coeff": 0.001,
    "optimizer": "sgd",
    "lr_schedule": "cosine",
    "weight_decay": 5e-4,
    "momentum": 0.9,
    "priority_prob_alpha": 0.0,
    "priority_prob_beta": 0.4,
    "prioritized_replay_eps": 1e-6,
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
    # The consistency loss: the paper's switch between BarlowZero, EfficientZero and MuZero.
    "consistency_loss": "barlow",
    "barlow_lambda": 0.0051,
    # Search (MuZero / EfficientZero values).
    "num_simulations": 50,
    "dirichlet_alpha": 0.3,
    "root_exploration_fraction": 0.25,
    "pb_c_base": 19652,
    "pb_c_init": 1.25,
    "value_delta_max": 0.01,
    "support_size": 300,
    # The search: "puct" (MuZero / EfficientZero, the paper's) or "gumbel" (Gumbel MuZero,
    # Danihelka et al. 2022), whose settings follow with the Gumbel MuZero paper's / mctx's values.
    "search_algorithm": "puct",
    "max_num_considered_actions": 16,
    "gumbel_scale": 1.0,
    "value_scale": 0.1,
    "maxvisit_init": 50.0,
    # How the Gumbel search rescales completed Q: "node" (mctx, the Gumbel MuZero paper) or
    # "tree" (EfficientZero V2: the tree's min-max statistics, floored by value_delta_max).
    "gumbel_q_normalization": "node",
    # Min-max normalise hidden states per sample (MuZero); EfficientZero's Atari model does not.
    "state_normalization": False,
    # Flush denormal floats to zero on CPU threads that run the network (see `flush_denormals`).
    # EfficientZero has no such setting: its networks run on GPUs, where denormals cost nothing.
    "flush_denormal": True,
    # Reanalyze searches with root Dirichlet noise, as EfficientZero and LightZero do.
    "reanalyze_noise": True,
    # Acting temperature on visit counts: None is EfficientZero's schedule (1.0, then 0.5 at 50%
    # and 0.25 at 75% of training_steps); a number holds that temperature (LightZero: 0.25).
    "fixed_temperature": None,
    # Vector observations (classic control) use an MLP representation of these widths.
    "mlp_hidden_layers": [64, 64],
    # Reanalyze on Ray actors (0: one thread in the driver) and batches in flight.
    "num_reanalyze_workers": 0,
    "num_cpus_per_reanalyze_worker": 1,
    "num_gpus_per_reanalyze_worker": 0,
    "custom_resources_per_reanalyze_worker": {},
    "reanalyze_queue_size": 1,
    # bf16 autocast of the learner's forward pass (GPU learners only).
    "mixed_precision": False,
    # Learner and replay.
    "target_update_interval": 200,
    "lr_warmup_steps": 1000,
    "replay_capacity": 100_000,
    "replay_ratio": 1.2,
    "num_steps_sampled_before_learning_starts": 2000,
    "total_env_steps": 100_000,
}

# Keys the RLModule needs (merged into its model_config).
MODEL_KEYS = (
    "consistency_loss",
    "channels",
    "blocks",
    "reduced_channels_reward",
    "reduced_channels_value",
    "reduced_channels_policy",
    "resnet_fc_reward_layers",
    "resnet_fc_value_layers",
    "resnet_fc_policy_layers",
    "lstm_hidden_size",
    "support_size",
    "proj_hid",
    "proj_out",
    "pred_hid",
    "pred_out",
    "bn_mt",
    "mlp_hidden_layers",
    "state_normalization",
    "flush_denormal",
    "mixed_precision",
    "augmentation",
    "num_simulations",
    "discount",
    "pb_c_base",
    "pb_c_init",
    "root_exploration_fraction",
    "dirichlet_alpha",
    "value_delta_max",
    "lstm_horizon_len",
    "training_steps",
    "fixed_temperature",
    "search_algorithm",
    "max_num_considered_actions",
    "gumbel_scale",
    "value_scale",
    "maxvisit_init",
    "gumbel_q_normalization",
)


class BarlowZeroConfig(AlgorithmConfig):
    """Configuration of BarlowZero (and, by `consistency_loss`, EfficientZero and MuZero).

    Example:
        config = (BarlowZeroConfig()
                  .environment("BreakoutNoFrameskip-v4")
                  .env_runners(num_env_runners=2, num_envs_per_env_runner=8)
                  .learners(num_learners=1, num_gpus_per_learner=1)
                  .training(consistency_loss="barlow", lr=0.01, batch_size=64))
        algo = config.build_algo()
    """

    def __init__(self, algo_class: type | None = None) -> None:
        super().__init__(algo_class=algo_class or BarlowZero)
        for key, value in TRAINING_DEFAULTS.items():
            setattr(self, key, type(value)(value) if isinstance(value, list | dict) else value)
        # Base-class fields with BarlowZero's values (`gamma` and `train_batch_size` are aliases
        # of `discount` and `batch_size`, see below).
        self.lr = 0.01
        self.grad_clip = 5.0
        self.grad_clip_by = "global_norm"
        self.rollout_fragment_length = 50
        self.batch_mode = "truncate_episodes"
        self.num_env_runners = 0
        self.num_envs_per_env_runner = 8
        # Evaluation: whole games without noise, the paper's 32 episodes.
        self.evaluation_duration = 32
        self.evaluation_duration_unit = "episodes"
        self.evaluation_config = {"explore": False}
        # TensorBoard events from a plain `algo.train()` loop too (silent under Tune, which
        # writes its own).
        self.callbacks_class = TensorBoardCallback
        # Whole-episode evaluation without length bias (a fixed quota of games per env), and
        # seeded random streams per vector-env slot.
        self.env_runner_cls = BarlowZeroEnvRunner

    # RLlib's names for two Table-2 settings: one value, whichever name sets it (also through
    # `update_from_dict`, i.e. Tune and YAML), so neither can be silently ignored.
    @property
    def gamma(self) -> float:
        return self.discount

    @gamma.setter
    def gamma(self, value: float) -> None:
        self.discount = value

    @property
    def train_batch_size(self) -> int:
        return self.batch_size

    @train_batch_size.setter
    def train_batch_size(self, value: int) -> None:
        self.batch_size = value

    # Episodes keep single frames; the env runners need the last n-1 of them to stack.
    @property
    def episode_lookback_horizon(self) -> int:
        return max(self._episode_lookback_horizon, self.stacked_observations - 1)

    @episode_lookback_horizon.setter
    def episode_lookback_horizon(self, value: int) -> None:
        self._episode_lookback_horizon = value

    def training(
        self,
        *,
        auto_td_steps_ratio: float = NotProvided,
        max_moves: int = NotProvided,
        history_length: int = NotProvided,
        discount: float = NotProvided,
        training_steps: int = NotProvided,
        batch_size: int = NotProvided,
        num_unroll_steps: int = NotProvided,
        td_steps: int = NotProvided,
        stacked_observations: int = NotProvided,
        lstm_hidden_size: int = NotProvided,
        lstm_horizon_len: int = NotProvided,
        reward_loss_coeff: float = NotProvided,
        value_loss_coeff: float = NotProvided,
        policy_loss_coeff: float = NotProvided,
        consistency_loss_coeff: float = NotProvided,
        optimizer: str = NotProvided,
        lr_schedule: str = NotProvided,
        weight_decay: float = NotProvided,
        momentum: float = NotProvided,
        priority_prob_alpha: float = NotProvided,
        priority_prob_beta: float = NotProvided,
        prioritized_replay_eps: float = NotProvided,
        proj_hid: int = NotProvided,
        proj_out: int = NotProvided,
        pred_hid: int = NotProvided,
        pred_out: int = NotProvided,
        bn_mt: float = NotProvided,
        blocks: int = NotProvided,
        channels: int = NotProvided,
        reduced_channels_reward: int = NotProvided,
        reduced_channels_value: int = NotProvided,
        reduced_channels_policy: int = NotProvided,
        resnet_fc_reward_layers: list[int] = NotProvided,
        resnet_fc_value_layers: list[int] = NotProvided,
        resnet_fc_policy_layers: list[int] = NotProvided,
        augmentation: list[str] = NotProvided,
        revisit_policy_search_rate: float = NotProvided,
        consistency_loss: str = NotProvided,
        barlow_lambda: float = NotProvided,
        num_simulations: int = NotProvided,
        dirichlet_alpha: float = NotProvided,
        root_exploration_fraction: float = NotProvided,
        pb_c_base: float = NotProvided,
        pb_c_init: float = NotProvided,
        value_delta_max: float = NotProvided,
        support_size: int = NotProvided,
        search_algorithm: str = NotProvided,
        max_num_considered_actions: int = NotProvided,
        gumbel_scale: float = NotProvided,
        value_scale: float = NotProvided,
        maxvisit_init: float = NotProvided,
        gumbel_q_normalization: str = NotProvided,
        state_normalization: bool = NotProvided,
        flush_denormal: bool = NotProvided,
        reanalyze_noise: bool = NotProvided,
        fixed_temperature: float | None = NotProvided,
        mlp_hidden_layers: list[int] = NotProvided,
        num_reanalyze_workers: int = NotProvided,
        num_cpus_per_reanalyze_worker: float = NotProvided,
        num_gpus_per_reanalyze_worker: float = NotProvided,
        custom_resources_per_reanalyze_worker: dict[str, float] = NotProvided,
        reanalyze_queue_size: int = NotProvided,
        mixed_precision: bool = NotProvided,
        target_update_interval: int = NotProvided,
        lr_warmup_steps: int = NotProvided,
        replay_capacity: int = NotProvided,
        replay_ratio: float = NotProvided,
        num_steps_sampled_before_learning_starts: int = NotProvided,
        total_env_steps: int = NotProvided,
        **kwargs,
    ) -> BarlowZeroConfig:
        """Sets the training hyperparameters.

        Args (beyond RLlib's own `lr`, `grad_clip`, ...; defaults are the paper's Table 2):
            consistency_loss: "barlow" (BarlowZero), "simsiam" (EfficientZero) or "none" (MuZero
                with a value prefix).
            batch_size: training batch size B (the paper: 64).
            training_steps: gradient steps of the whole run; the cosine schedule spans them.
            num_unroll_steps, td_steps, discount: K, n and the per-agent-step discount.
            revisit_policy_search_rate: share of samples whose policy target is re-searched with
                the target model (reanalyze).
            optimizer: "sgd" (the paper) or "adam"; lr_schedule: "cosine" (the paper), "step"
                (EfficientZero: x0.1 after 5/6 of training) or "constant", each after a linear
                warm-up over `lr_warmup_steps`.
            replay_capacity: replay size in env steps. replay_ratio: training steps per env step.
            num_steps_sampled_before_learning_starts: warm-up env steps before training.
            total_env_steps: env steps collected in all (Atari 100k: 100,000); training goes on
                to `training_steps` afterwards.
            target_update_interval: gradient steps between target-model refreshes; each refresh
                loads the snapshot of the previous one (EfficientZero), so targets are 1-2
                intervals old.
            lr_warmup_steps: linear warm-up of every `lr_schedule` (EfficientZero: 1000; 0: none).
            state_normalization: min-max normalise hidden states per sample (MuZero); off by
                default, as EfficientZero's Atari model.
            flush_denormal: CPU threads running the network treat denormal floats (below
                1.2e-38) as zero. Weights that only weight decay moves sink into that range,
                where each multiply is ~100x slower: MinAtar runs slowed 3x after ~6k training
                steps without it. Changes no value above 1.2e-38; no effect on GPUs.
            reanalyze_noise: reanalyze searches with root noise (EfficientZero: on): Dirichlet
                noise for pUCT, Gumbel noise times `gumbel_scale` for "gumbel".
            fixed_temperature: None samples actions from visit counts with EfficientZero's
                temperature schedule over `training_steps` (1.0, 0.5 from 50%, 0.25 from 75%);
                a number > 0 holds that temperature for the whole run (LightZero's default 0.25).
                pUCT only (must stay None with search_algorithm="gumbel").
            search_algorithm: "puct" (MuZero / EfficientZero's search, the paper's: Dirichlet
                root noise, actions sampled from visit counts) or "gumbel" (Gumbel MuZero,
                Danihelka et al. 2022: acting plays the search's action, exploring with Gumbel
                noise and greedy without; policy targets are its improved policy). The pUCT
                settings (`dirichlet_alpha`, `root_exploration_fraction`, `pb_c_base`,
                `pb_c_init`, `value_delta_max`, `fixed_temperature`) must keep their defaults
                with "gumbel" (`value_delta_max` excepted with gumbel_q_normalization="tree"),
                the next five with "puct" (each search refuses the other's).
            max_num_considered_actions: Gumbel: root actions sequential halving starts from
                (an integer >= 1; the Gumbel MuZero paper's 16).
            gumbel_scale: Gumbel: scale of the root Gumbel noise when acting to explore and in
                reanalyze with `reanalyze_noise` (>= 0; 1.0).
            value_scale, maxvisit_init: Gumbel: sigma(q) = (maxvisit_init + max visits) *
                value_scale * q, q the completed Q rescaled to [0, 1] (>= 0; mctx's 0.1 and 50).
            gumbel_q_normalization: Gumbel: how completed Q is rescaled to [0, 1]: "node" (mctx:
                by the node's own min and max, so any gap between two actions spans [0, 1]) or
                "tree" (EfficientZero V2: by the root's min-max statistics over the tree, as
                pUCT, with `value_delta_max` as the floor of the range; small gaps stay small).
            num_reanalyze_workers: Ray actors making training batches, each with a target-model
                copy (0: one thread in the driver). A seed gives the same run whatever the
                number (with the same `reanalyze_queue_size`).
            num_cpus_per_reanalyze_worker, num_gpus_per_reanalyze_worker,
                custom_resources_per_reanalyze_worker: each worker's Ray resources (fractions
                allowed; a GPU share runs its target model on the GPU).
            reanalyze_queue_size: batches in flight ahead of the learner (at least the number of
                workers; 1 overlaps reanalyze of batch i+1 with update i).
            mixed_precision: bf16 autocast of the learner's forward pass (GPU learners only;
                losses in float32).
            max_moves: agent steps per game before it is cut (training and evaluation); the
                one route to the cap of an env given by its gymnasium id.
            gamma, train_batch_size (RLlib's names): aliases of `discount` and `batch_size`.
            All other names follow the paper's Table 2.
        """
        for ours, rllibs in (("discount", "gamma"), ("batch_size", "train_batch_size")):
            mine, theirs = locals()[ours], kwargs.get(rllibs, NotProvided)
            if mine is not NotProvided and theirs is not NotProvided and mine != theirs:
                raise ValueError(
                    f"BarlowZeroConfig.training: `{rllibs}`={theirs!r} and `{ours}`={mine!r} "
                    f"disagree; `{rllibs}` is RLlib's name for `{ours}`, set one of them."
                )
        super().training(**kwargs)
        for key, value in locals().items():
            if key in TRAINING_DEFAULTS and value is not NotProvided:
                setattr(self, key, value)
        return self

    def validate(self) -> None:
        super().validate()
        if not self.enable_rl_module_and_learner:
            self._value_error("BarlowZero runs on RLlib's new API stack only.")
        _validate_training_values(self)
        _refuse_ignored_settings(self)

    def build_env_to_module_connector(self, env=None, spaces=None, device=None):
        pipeline = super().build_env_to_module_connector(env=env, spaces=spaces, device=device)
        pipeline.prepend(FrameStackingEnvToModule(num_frames=self.stacked_observations))
        return pipeline

    def get_evaluation_config_object(self) -> AlgorithmConfig | None:
        eval_config = super().get_evaluation_config_object()
        if eval_config is not None and isinstance(self.env, str) and is_atari_env_id(self.env):
            # Evaluation plays whole games with raw scores.
            eval_config.env_config = {**eval_config.env_config, "training": False}
        return eval_config

    def get_default_rl_module_spec(self) -> RLModuleSpec:
        from rllib_barlowzero.torch.barlowzero_torch_rl_module import BarlowZeroTorchRLModule

        return RLModuleSpec(module_class=BarlowZeroTorchRLModule)

    def get_default_learner_class(self) -> type:
        from rllib_barlowzero.torch.barlowzero_torch_learner import BarlowZeroTorchLearner

        return BarlowZeroTorchLearner

    @property
    def _model_config_auto_includes(self) -> dict[str, Any]:
        return super()._model_config_auto_includes | {k: getattr(self, k) for k in MODEL_KEYS}


# Settings read by one search only (see `search_algorithm`); the other refuses non-default values.
PUCT_ONLY_KEYS = ("dirichlet_alpha", "root_exploration_fraction", "pb_c_base", "pb_c_init",
                  "value_delta_max", "fixed_temperature")
GUMBEL_ONLY_KEYS = ("max_num_considered_actions", "gumbel_scale", "value_scale", "maxvisit_init",
                    "gumbel_q_normalization")


def _validate_training_values(config: BarlowZeroConfig) -> None:
    """Refuses values outside their ranges with a message naming the key."""

    def fail(key: str, allowed: str) -> None:
        raise ValueError(
            f"BarlowZeroConfig: `{key}`={getattr(config, key)!r} is invalid; expected {allowed}."
        )

    positive_ints = (
        "max_moves history_length training_steps batch_size num_unroll_steps td_steps "
        "stacked_observations lstm_hidden_size lstm_horizon_len proj_hid proj_out pred_hid "
        "pred_out channels reduced_channels_reward reduced_channels_value "
        "reduced_channels_policy num_simulations support_size target_update_interval "
        "replay_capacity total_env_steps max_num_considered_actions"
    ).split()
    for key in positive_ints:
        value = getattr(config, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            fail(key, "an integer >= 1")
    for key in ("blocks", "lr_warmup_steps", "num_steps_sampled_before_learning_starts"):
        value = getattr(config, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            fail(key, "an integer >= 0")
    unit_interval = (
        "discount revisit_policy_search_rate root_exploration_fraction priority_prob_beta "
        "momentum bn_mt"
    ).split()
    for key in unit_interval:
        if not _is_real(getattr(config, key)) or not 0.0 <= getattr(config, key) <= 1.0:
            fail(key, "a number in [0, 1]")
    non_negative = (
        "reward_loss_coeff value_loss_coeff policy_loss_coeff consistency_loss_coeff "
        "weight_decay priority_prob_alpha prioritized_replay_eps barlow_lambda value_delta_max "
        "gumbel_scale value_scale maxvisit_init"
    ).split()
    for key in non_negative:
        if not _is_real(getattr(config, key)) or getattr(config, key) < 0:
            fail(key, "a number >= 0")
    strictly_positive = "auto_td_steps_ratio dirichlet_alpha pb_c_base pb_c_init replay_ratio"
    for key in strictly_positive.split():
        if not _is_real(getattr(config, key)) or getattr(config, key) <= 0:
            fail(key, "a number > 0")
    if not _is_real(config.lr) or config.lr <= 0:
        fail("lr", "a number > 0 (the schedule is set by `lr_schedule`, not by an lr list)")
    for key in ("resnet_fc_reward_layers", "resnet_fc_value_layers", "resnet_fc_policy_layers",
                "mlp_hidden_layers"):
        value = getattr(config, key)
        if not isinstance(value, list | tuple) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value
        ):
            fail(key, "a list of integers >= 1")
    for key, known in (
        ("consistency_loss", CONSISTENCY_LOSSES),
        ("lr_schedule", LR_SCHEDULES),
        ("optimizer", OPTIMIZERS),
        ("search_algorithm", SEARCH_ALGORITHMS),
        ("gumbel_q_normalization", Q_NORMALIZATIONS),
    ):
        if getattr(config, key) not in known:
            fail(key, f"one of {list(known)}")
    if not _is_int(config.num_reanalyze_workers) or config.num_reanalyze_workers < 0:
        fail("num_reanalyze_workers", "an integer >= 0 (0: reanalyze on a driver thread)")
    if not _is_int(config.reanalyze_queue_size) or config.reanalyze_queue_size < max(
        1, config.num_reanalyze_workers
    ):
        fail("reanalyze_queue_size",
             f"an integer >= max(1, num_reanalyze_workers={config.num_reanalyze_workers}), "
             "or some workers would never get a batch")
    for key in ("num_cpus_per_reanalyze_worker", "num_gpus_per_reanalyze_worker"):
        if not _is_real(getattr(config, key)) or getattr(config, key) < 0:
            fail(key, "a number >= 0")
    if config.num_cpus_per_reanalyze_worker + config.num_gpus_per_reanalyze_worker <= 0:
        fail("num_cpus_per_reanalyze_worker", "> 0 when num_gpus_per_reanalyze_worker is 0")
    resources = config.custom_resources_per_reanalyze_worker
    if not isinstance(resources, dict) or not all(
        isinstance(k, str) and _is_real(v) and v >= 0 for k, v in resources.items()
    ):
        fail("custom_resources_per_reanalyze_worker", "a dict of resource name -> amount >= 0")
    if config.mixed_precision and config.num_gpus_per_learner == 0:
        fail("mixed_precision", "False unless the learner has a GPU (num_gpus_per_learner > 0); "
             "bf16 autocast is a GPU setting")
    for key in ("state_normalization", "flush_denormal", "reanalyze_noise", "mixed_precision"):
        if not isinstance(getattr(config, key), bool):
            fail(key, "True or False")
    if config.fixed_temperature is not None and (
        not _is_real(config.fixed_temperature) or config.fixed_temperature <= 0
    ):
        fail("fixed_temperature", "None (EfficientZero's schedule) or a number > 0")
    # A setting of the other search would be accepted and then ignored: refuse it instead.
    other_search_keys = GUMBEL_ONLY_KEYS if config.search_algorithm == "puct" else PUCT_ONLY_KEYS
    if config.search_algorithm == "gumbel" and config.gumbel_q_normalization == "tree":
        other_search_keys = tuple(k for k in other_search_keys if k != "value_delta_max")
    for key in other_search_keys:
        if getattr(config, key) != TRAINING_DEFAULTS[key]:
            fail(key, f"its default {TRAINING_DEFAULTS[key]!r} with search_algorithm="
                 f"{config.search_algorithm!r}: it is a setting of the other search, unused by "
                 "this one")
    if config.search_algorithm == "gumbel":
        if not math.isfinite((config.maxvisit_init + config.num_simulations) * config.value_scale):
            fail("value_scale", "small enough that (maxvisit_init + num_simulations) * "
                 "value_scale is finite")
    if not isinstance(config.augmentation, list | tuple) or any(
        a not in AUGMENTATIONS for a in config.augmentation
    ):
        fail("augmentation", f"a list drawn from {list(AUGMENTATIONS)}")
    if config.consistency_loss == "barlow" and config.batch_size < 2:
        fail("batch_size", "at least 2 with consistency_loss='barlow' (a batch statistic)")
    if config.num_steps_sampled_before_learning_starts > config.replay_capacity:
        fail("num_steps_sampled_before_learning_starts", "at most `replay_capacity`")
    if config.num_learners > 1 and config.batch_size % config.num_learners:
        fail("batch_size", f"a multiple of num_learners={config.num_learners}")


def _refuse_ignored_settings(config: BarlowZeroConfig) -> None:
    """Refuses RLlib settings that BarlowZero would otherwise ignore, naming what to set instead."""
    per_learner = config._train_batch_size_per_learner
    if per_learner is not None and per_learner * max(1, config.num_learners) != config.batch_size:
        raise ValueError(
            f"BarlowZeroConfig: `train_batch_size_per_learner`={per_learner!r} is not used; "
            f"BarlowZero updates on `batch_size`={config.batch_size} samples per gradient step, "
            "split over the learners. Set `batch_size`."
        )
    evaluation_env_config = (config.evaluation_config or {}).get("env_config") or {}
    if "max_moves" in {**(config.env_config or {}), **evaluation_env_config}:
        raise ValueError(
            "BarlowZeroConfig: `max_moves` in `env_config` is not read; set it with "
            f".training(max_moves=...) (now {config.max_moves}), its one route to the env."
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class BarlowZero(Algorithm):
    """BarlowZero: MuZero with a value prefix, reanalyze and a Barlow Twins consistency loss.

    One `training_step`: collect a rollout with the search-driven env runners (until
    `total_env_steps`), add it to the game-segment replay buffer, then run `replay_ratio` gradient
    steps per new env step: sample windows, reanalyze them with the target model into targets,
    update the learners, send new priorities back. Weights go to the env runners each iteration;
    the target model is refreshed every `target_update_interval` gradient steps.
    """

    @classmethod
    @override(Algorithm)
    def get_default_config(cls) -> BarlowZeroConfig:
        return BarlowZeroConfig()

    @classmethod
    @override(Algorithm)
    def _should_create_evaluation_env_runners(cls, eval_config: AlgorithmConfig) -> bool:
        # Always: without them `evaluate()` would play on the training env runner, with noise,
        # sampled actions and (Atari) episodic lives and clipped rewards.
        return True

    @override(Algorithm)
    def setup(self, config: AlgorithmConfig) -> None:
        register_env_with_move_cap(config.env, config.max_moves)
        if not torch.cuda.is_available() or config.num_gpus_per_learner == 0:
            # The learner (when local), the reanalyze thread and the local env runner share this
            # process: give torch the CPUs RLlib reserves for it, as Ray does for its actors.
            # More intra-op threads than cores made a CartPole iteration 2.7x slower here.
            torch.set_num_threads(max(1, int(config.num_cpus_for_main_process)))
        super().setup(config)
        cfg = self.config
        self.replay_buffer = GameSegmentReplayBuffer(
            capacity=cfg.replay_capacity,
            history_length=cfg.history_length,
            stacked_observations=cfg.stacked_observations,
            num_unroll_steps=cfg.num_unroll_steps,
            td_steps=cfg.td_steps,
            priority_prob_alpha=cfg.priority_prob_alpha,
            priority_prob_beta=cfg.priority_prob_beta,
            prioritized_replay_eps=cfg.prioritized_replay_eps,
            seed=cfg.seed,
        )
        device = "cuda" if cfg.num_gpus_per_learner > 0 and torch.cuda.is_available() else "cpu"
        self.reanalyzer = Reanalyzer(
            self._build_network(), cfg, seed=run_seed(cfg.seed), device=device
        )
        # The target model lags one refresh behind (EfficientZero): each refresh loads the
        # snapshot taken at the previous one, so targets are 1-2 intervals old.
        self._next_target_weights = self._online_weights()
        self.reanalyzer.set_weights(self._next_target_weights)
        _check_reanalyze_resources(cfg)
        self.reanalyze_queue = ReanalyzeQueue(self.reanalyzer, cfg, self._next_target_weights)
        self._training_steps_done = 0
        self._updates_owed = 0.0
        self._weights_step = 0  # the gradient step of the weights the env runners play with
        self._orphaned_episodes_closed = 0

    def _build_network(self) -> torch.nn.Module:
        """A fresh inference-only network with the module's spaces (to hold target weights)."""
        spec = self.config.get_rl_module_spec(
            env=None,
            spaces=self.env_runner_group.get_spaces(),
            inference_only=True,
        )
        return spec.build().network

    def _online_weights(self) -> dict[str, np.ndarray]:
        """The learner's current network weights (inference part), keyed as in the network."""
        state = self.learner_group.get_state(
            components=f"{COMPONENT_LEARNER}/{COMPONENT_RL_MODULE}/{DEFAULT_MODULE_ID}",
            inference_only=True,
        )[COMPONENT_LEARNER][COMPONENT_RL_MODULE][DEFAULT_MODULE_ID]
        prefix = "network."
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}

    @override(Algorithm)
    def training_step(self) -> None:
        cfg = self.config
        sampled_before = self.metrics.peek(
            (ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0
        )
        new_steps = 0
        if sampled_before < cfg.total_env_steps:
            start = time.perf_counter()
            with self.metrics.log_time((TIMERS, ENV_RUNNER_SAMPLING_TIMER)):
                episodes, runner_results = synchronous_parallel_sample(
                    worker_set=self.env_runner_group,
                    max_env_steps=cfg.rollout_fragment_length
                    * cfg.num_envs_per_env_runner
                    * max(1, cfg.num_env_runners),
                    sample_timeout_s=cfg.sample_timeout_s,
                    _uses_new_env_runners=True,
                    _return_metrics=True,
                )
            self.metrics.aggregate(runner_results, key=ENV_RUNNER_RESULTS)
            for episode in episodes:
                new_steps += add_episode_chunk(self.replay_buffer, episode, self._weights_step)
            # Every env slot sends a chunk each round: an episode in progress that got none
            # was played by an env runner that died (and was restarted with new episodes).
            self._close_orphaned_episodes({str(e.id_) for e in episodes})
            self.metrics.log_value(
                "env_steps_per_s", new_steps / (time.perf_counter() - start), window=1
            )
            self._log_search_statistics(episodes)
        else:
            # Collection is over (the env-step budget): keep training at the same pace.
            new_steps = (cfg.rollout_fragment_length * cfg.num_envs_per_env_runner
                         * max(1, cfg.num_env_runners))

        if len(self.replay_buffer) >= max(cfg.num_steps_sampled_before_learning_starts,
                                          cfg.batch_size):
            self._updates_owed += cfg.replay_ratio * new_steps
        num_updates = min(int(self._updates_owed), cfg.training_steps - self._training_steps_done)
        self._updates_owed -= int(self._updates_owed)
        if num_updates > 0:
            self._train(num_updates)

        if num_updates > 0:
            with self.metrics.log_time((TIMERS, SYNCH_WORKER_WEIGHTS_TIMER)):
                self.env_runner_group.sync_weights(
                    from_worker_or_learner_group=self.learner_group,
                    policies=[DEFAULT_MODULE_ID],
                    inference_only=True,
                )
            self._weights_step = self._training_steps_done
        for key, value in self.replay_buffer.stats().items():
            self.metrics.log_value(("replay_buffer", key), value, window=1)
        self.metrics.log_value("training_steps_done", self._training_steps_done, window=1)

    def _close_orphaned_episodes(self, live_ids: set[str]) -> None:
        """Commits the played steps of episodes that will get no more chunks, as truncated.

        Closed rather than dropped: their steps are real data, and a truncated end only stops
        the value bootstrap at the last frame played. (Should a live episode be closed by
        mistake, e.g. a runner that timed out this round, its next chunk starts a new episode
        in the buffer: nothing is lost.)
        """
        closed, steps = self.replay_buffer.close_episodes_except(live_ids)
        self._orphaned_episodes_closed += closed
        self.metrics.log_value(("replay_buffer", "orphaned_episodes_closed"),
                               self._orphaned_episodes_closed, window=1)
        if steps:
            self.metrics.log_value(("replay_buffer", "orphaned_steps_committed"), steps,
                                   reduce="sum")

    def _train(self, num_updates: int) -> None:
        """Runs `num_updates` gradient steps while reanalyze makes the next batches.

        Windows are sampled on this thread, so priorities and the buffer's rng are used in a fixed
        order; up to `reanalyze_queue_size` batches are in the making (on a driver thread or on
        `num_reanalyze_workers` Ray actors) and come back in order, each made with the target
        model of its submission, so a seed gives the same run every time and for any number of
        workers.
        """
        cfg = self.config
        queue = self.reanalyze_queue
        first, end = self._training_steps_done, self._training_steps_done + num_updates
        submitted = first

        def fill_queue() -> None:
            nonlocal submitted
            while len(queue) < cfg.reanalyze_queue_size and submitted < end:
                beta = annealed_beta(cfg.priority_prob_beta, submitted, cfg.training_steps)
                windows = self.replay_buffer.sample(cfg.batch_size, beta=beta)
                queue.submit(windows, learner_step=submitted, batch_index=submitted)
                submitted += 1

        wait_s = update_s = reanalyze_s = 0.0
        depth = 0
        restarts_before = queue.restarts
        begin = time.perf_counter()
        try:
            fill_queue()
            for _ in range(num_updates):
                depth += len(queue)
                start = time.perf_counter()
                windows, batch, seconds = queue.next_batch()
                wait_s += time.perf_counter() - start
                reanalyze_s += seconds
                fill_queue()
                start = time.perf_counter()
                results = self.learner_group.update(
                    batch=MultiAgentBatch(
                        {DEFAULT_MODULE_ID: SampleBatch(batch)}, env_steps=cfg.batch_size
                    ),
                    timesteps={
                        NUM_ENV_STEPS_SAMPLED_LIFETIME: self.metrics.peek(
                            (ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0
                        )
                    },
                )
                update_s += time.perf_counter() - start
                priorities = np.concatenate(
                    [np.asarray(r[DEFAULT_MODULE_ID].pop(BarlowZeroColumns.NEW_PRIORITIES).peek())
                     .reshape(-1) for r in results]
                )
                self.replay_buffer.update_priorities(windows.indices, priorities)
                self.metrics.aggregate(results, key=LEARNER_RESULTS)
                self.metrics.log_value("td_steps_mean",
                                       float(batch[BarlowZeroColumns.TD_STEPS].mean()), window=1)
                self._training_steps_done += 1
                if self._training_steps_done % cfg.target_update_interval == 0:
                    queue.set_target_weights(self._next_target_weights)
                    self._next_target_weights = self._online_weights()
        finally:
            queue.clear()

        elapsed = time.perf_counter() - begin
        self.metrics.log_value((TIMERS, "learner_update_s"), update_s / num_updates, window=1)
        self.metrics.log_value((TIMERS, "reanalyze_batch_s"), reanalyze_s / num_updates, window=1)
        self.metrics.log_value((TIMERS, "learner_wait_s"), wait_s / num_updates, window=1)
        self.metrics.log_value("learner_idle_share", wait_s / (wait_s + update_s), window=1)
        self.metrics.log_value("learner_steps_per_s", num_updates / elapsed, window=1)
        # Reanalyze capacity (what the makers could deliver), not the pipelined pace, which is
        # learner_steps_per_s.
        capacity = max(1, queue.num_workers) * num_updates / reanalyze_s if reanalyze_s else 0.0
        self.metrics.log_value(("reanalyze", "batches_per_s"), capacity, window=1)
        self.metrics.log_value(("reanalyze", "queue_depth_mean"), depth / num_updates, window=1)
        self.metrics.log_value(("reanalyze", "num_workers"), queue.num_workers, window=1)
        self.metrics.log_value(("reanalyze", "worker_restarts"), queue.restarts - restarts_before,
                               reduce="sum")
        self.metrics.log_value(("reanalyze", "worker_restarts_lifetime"), queue.restarts,
                               window=1)

    def _log_search_statistics(self, episodes: list[Any]) -> None:
        """Mean root value and visit-count entropy of the searches that played `episodes`."""
        # The Gumbel search's `mcts_policy` is its improved policy: its visits come separately.
        gumbel = self.config.search_algorithm == "gumbel"
        key = BarlowZeroColumns.VISIT_COUNTS if gumbel else BarlowZeroColumns.MCTS_POLICY
        policies = [np.asarray(e.get_extra_model_outputs(key)) for e in episodes if len(e)]
        values = [np.asarray(e.get_extra_model_outputs(BarlowZeroColumns.ROOT_VALUE))
                  for e in episodes if len(e)]
        if not policies:
            return
        policy = np.concatenate(policies)
        if gumbel:
            policy = policy / policy.sum(axis=1, keepdims=True)
        entropy = -(policy * np.log(np.where(policy > 0, policy, 1.0))).sum(axis=1)
        self.metrics.log_value(("search", "root_value_mean"), float(np.concatenate(values).mean()),
                               window=1)
        self.metrics.log_value(("search", "visit_entropy_mean"), float(entropy.mean()), window=1)

    @override(Algorithm)
    def cleanup(self) -> None:
        self.reanalyze_queue.shutdown()
        super().cleanup()

    @classmethod
    @override(Algorithm)
    def default_resource_request(
        cls, config: AlgorithmConfig | dict[str, Any]
    ) -> PlacementGroupFactory:
        """RLlib's bundles (driver, env runners, learners) plus one per reanalyze worker."""
        factory = super().default_resource_request(config)
        config = cls.get_default_config().update_from_dict(config)
        worker = reanalyze_worker_resources(config)
        return PlacementGroupFactory(
            bundles=factory.bundles + [worker] * config.num_reanalyze_workers,
            strategy=factory.strategy,
        )

    @override(Algorithm)
    def get_state(self, *args, **kwargs) -> dict[str, Any]:
        state = super().get_state(*args, **kwargs)
        state["barlowzero"] = {
            "replay_buffer": self.replay_buffer.get_state(),
            "target_model": self.reanalyze_queue.target_weights,
            "next_target_model": self._next_target_weights,
            "seed": self.reanalyzer.seed,
            "training_steps_done": self._training_steps_done,
            "updates_owed": self._updates_owed,
            "weights_step": self._weights_step,
            "orphaned_episodes_closed": self._orphaned_episodes_closed,
        }
        return state

    @override(Algorithm)
    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        own = state.get("barlowzero")
        if own is None:
            return
        self.replay_buffer.set_state(own["replay_buffer"])
        target = {k: _to_numpy(v) for k, v in own["target_model"].items()}
        self.reanalyzer.set_weights(target)
        self.reanalyze_queue.set_target_weights(target)
        # Checkpoints from before the lagged target and the per-batch streams lack these two:
        # the target then lags from here on, and the batches draw from the configured seed.
        self._next_target_weights = own.get("next_target_model", own["target_model"])
        self.reanalyzer.seed = own.get("seed", run_seed(self.config.seed))
        self._training_steps_done = own["training_steps_done"]
        self._updates_owed = own["updates_owed"]
        self._weights_step = own["weights_step"]
        self._orphaned_episodes_closed = own.get("orphaned_episodes_closed", 0)
        # The env runners play new episodes after a restore: the buffer's episodes in progress
        # will get no more chunks.
        self._close_orphaned_episodes(set())


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _check_reanalyze_resources(config: BarlowZeroConfig) -> None:
    """Refuses reanalyze workers the Ray cluster can never place (they would wait forever)."""
    if config.num_reanalyze_workers == 0:
        return
    total = ray.cluster_resources()
    for name, amount in reanalyze_worker_resources(config).items():
        if total.get(name, 0) < amount:
            key = {"CPU": "num_cpus_per_reanalyze_worker",
                   "GPU": "num_gpus_per_reanalyze_worker"}.get(
                       name, "custom_resources_per_reanalyze_worker")
            raise ValueError(
                f"BarlowZero: each of the {config.num_reanalyze_workers} reanalyze workers needs "
                f"{amount} {name}, and the Ray cluster has {total.get(name, 0)} in all; lower "
                f"`{key}` or add nodes that have it."
            )


def add_episode_chunk(buffer: GameSegmentReplayBuffer, episode: Any, collected_at: int) -> int:
    """Adds one RLlib `SingleAgentEpisode` chunk to the buffer; returns its number of steps."""
    actions = np.asarray(episode.get_actions())
    if len(actions) == 0 and not episode.is_done:
        return 0
    buffer.add_episode_chunk(
        episode_id=str(episode.id_),
        observations=np.asarray(episode.get_observations()),
        actions=actions,
        rewards=np.asarray(episode.get_rewards(), dtype=np.float32),
        mcts_policy=np.asarray(episode.get_extra_model_outputs(BarlowZeroColumns.MCTS_POLICY),
                               dtype=np.float32),
        root_values=np.asarray(episode.get_extra_model_outputs(BarlowZeroColumns.ROOT_VALUE),
                               dtype=np.float32),
        terminated=bool(episode.is_terminated),
        truncated=bool(episode.is_truncated),
        collected_at=collected_at,
    )
    return len(actions)


def register_env_with_move_cap(env: Any, max_moves: int) -> None:
    """Registers a gymnasium id so that every game is cut at `max_moves` agent steps.

    ALE ids (e.g. BreakoutNoFrameskip-v4) go through EfficientZero's Atari pipeline, whose last
    wrapper is the move cap; other ids get `rllib_barlowzero.env.make_gym_env`: `gym.make`, image
    observations (2-D or 3-D Box) made uint8 [C, H, W] frames by `ChannelsFirstUint8`, then a
    `TimeLimit(max_moves)` (on top of any limit of their own). `MinAtar/` ids register with
    gymnasium here and on every env runner (an ImportError with the install command when
    `minatar` is missing). `.training(max_moves=...)` is the one route to the cap; an env given as
    a class or creator is the user's own and is not wrapped.
    """
    if not isinstance(env, str):
        return
    if is_atari_env_id(env):
        register_env(
            env,
            lambda env_config: atari_env_creator(
                {**env_config, "env_id": env, "max_moves": max_moves}
            ),
        )
        return
    if is_minatar_env_id(env):
        register_minatar_envs(env)
    if env in gym.registry:
        register_env(env, lambda env_config: make_gym_env(env, env_config, max_moves))
