"""The BarlowZero RLModule: MCTS-driven acting on env runners, the K-step unroll on learners."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis import InferenceOnlyAPI
from ray.rllib.core.rl_module.torch import TorchRLModule

from rllib_barlowzero.columns import BarlowZeroColumns
from rllib_barlowzero.torch.augmentations import augment
from rllib_barlowzero.torch.networks import (
    BarlowZeroNetwork,
    choose_downsample,
    flush_denormals,
    flush_denormals_from,
    skip_uninitialized_memory_fill,
)
from rllib_barlowzero.torch.search import (
    SEARCH_ALGORITHMS,
    draw_gumbel_noise,
    draw_search_randomness,
    gumbel_search,
    gumbel_settings_from,
    mcts_config_from,
    most_visited_actions,
    sample_actions,
    search,
    search_algorithm_from,
    slot_generators,
    visit_temperature,
)


def check_spaces(observation_space: gym.Space, action_space: gym.Space) -> None:
    """Refuses spaces the BarlowZero model cannot take, naming what it expects.

    The module sees the env runner's (stacked) observation space. Gymnasium ids come through
    `rllib_barlowzero.env.make_gym_env`, which already turns image spaces ((H, W), (H, W, C) or
    (C, H, W); uint8, bool or float in [0, 1]) into uint8 (C, H, W); an env given as a class or
    creator must do so itself, e.g. with `rllib_barlowzero.env.ChannelsFirstUint8`.
    """
    if not isinstance(action_space, gym.spaces.Discrete):
        raise ValueError(
            f"BarlowZero needs a Discrete action space; the env has {action_space}."
        )
    if not isinstance(observation_space, gym.spaces.Box) or len(observation_space.shape) not in (
        1,
        3,
    ):
        raise ValueError(
            "BarlowZero needs a Box observation space of shape (D,) (vectors) or (C, H, W) "
            f"uint8 images (channels first); the env has {observation_space}. Image envs given "
            "as a class or creator: wrap them in rllib_barlowzero.env.ChannelsFirstUint8."
        )
    if len(observation_space.shape) == 3 and observation_space.dtype != "uint8":
        raise ValueError(
            "BarlowZero image observations must be uint8 (C, H, W); the env has dtype "
            f"{observation_space.dtype}. Image envs given as a class or creator: wrap them in "
            "rllib_barlowzero.env.ChannelsFirstUint8 (bool and float in [0, 1] become uint8)."
        )


def _accept_old_counter_name(state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Checkpoints written before the counter's rename call `gradient_steps` `training_step`."""
    old = prefix + "training_step"
    if old in state_dict:
        state_dict[prefix + "gradient_steps"] = state_dict.pop(old)


class BarlowZeroTorchRLModule(TorchRLModule, InferenceOnlyAPI):
    """Holds the representation, dynamics and prediction networks (on learners: the projection).

    With `search_algorithm` "puct" (the default), `_forward_exploration` searches with Dirichlet
    noise at the roots and samples actions from the visit counts with EfficientZero's temperature
    schedule; `_forward_inference` searches without noise and takes the most visited action. Both
    add `mcts_policy` [B, A] (normalised visit counts) and `root_value` [B] to their outputs, so
    they land in the episodes.

    With "gumbel", both run the Gumbel MuZero search and play its `action`: exploration with
    Gumbel noise times `gumbel_scale` at the roots, inference with none (deterministic).
    `mcts_policy` is then the search's improved policy (the policy target), and `visit_counts`
    [B, A] is added.

    Row b of an acting batch (vector-env slot b on an env runner) draws its root noise, tie-breaking
    seed and action from its own generator, seeded from `set_random_streams`' key and b.
    """

    def setup(self) -> None:
        cfg = self.model_config
        check_spaces(self.observation_space, self.action_space)
        # Every process that runs the network builds a module first (env runners, learners, Serve
        # replicas, the driver), so the CPU mode is set here, before their search threads start.
        flush_denormals(flush_denormals_from(cfg))
        skip_uninitialized_memory_fill()  # RLlib's seeding turned it on (see the function)
        self.num_actions = int(self.action_space.n)
        observation_shape = tuple(self.observation_space.shape)
        self.network = BarlowZeroNetwork(
            observation_shape=observation_shape,
            num_actions=self.num_actions,
            channels=cfg["channels"],
            blocks=cfg["blocks"],
            reduced_channels_reward=cfg["reduced_channels_reward"],
            reduced_channels_value=cfg["reduced_channels_value"],
            reduced_channels_policy=cfg["reduced_channels_policy"],
            resnet_fc_reward_layers=tuple(cfg["resnet_fc_reward_layers"]),
            resnet_fc_value_layers=tuple(cfg["resnet_fc_value_layers"]),
            resnet_fc_policy_layers=tuple(cfg["resnet_fc_policy_layers"]),
            lstm_hidden_size=cfg["lstm_hidden_size"],
            support_size=cfg["support_size"],
            proj_hid=cfg["proj_hid"],
            proj_out=cfg["proj_out"],
            pred_hid=cfg["pred_hid"],
            pred_out=cfg["pred_out"],
            bn_mt=cfg["bn_mt"],
            consistency_loss="none" if self.inference_only else cfg["consistency_loss"],
            mlp_hidden_layers=tuple(cfg["mlp_hidden_layers"]),
            normalize_state=cfg["state_normalization"],
            downsample=choose_downsample(observation_shape),
        )
        # Gradient steps taken so far: drives the temperature schedule on env runners (it travels
        # with the weights) and the learning-rate schedule (it travels with checkpoints).
        self.register_buffer("gradient_steps", torch.zeros((), dtype=torch.int64))
        self._register_load_state_dict_pre_hook(_accept_old_counter_name)
        self.mcts_config = mcts_config_from(cfg)
        self.dirichlet_alpha = float(cfg["dirichlet_alpha"])
        self.search_algorithm = search_algorithm_from(cfg)
        if self.search_algorithm not in SEARCH_ALGORITHMS:
            raise ValueError(f"search_algorithm must be one of {list(SEARCH_ALGORITHMS)}, got "
                             f"{self.search_algorithm!r}")
        self.gumbel_settings = (
            gumbel_settings_from(cfg) if self.search_algorithm == "gumbel" else None
        )
        self.augmentation = list(cfg["augmentation"])
        self.set_random_streams((0,))

    def set_random_streams(self, key: tuple[int, ...]) -> None:
        """Restarts the per-row random streams of acting from the entropy `key` (non-negative
        ints: the config seed and the owner's index, e.g. (seed, runner kind, worker index))."""
        self._stream_key = tuple(int(k) for k in key)
        self._row_generators: list[np.random.Generator] = []

    def _generators(self, batch_size: int) -> list[np.random.Generator]:
        have = len(self._row_generators)
        if have < batch_size:  # more rows than ever before: new streams, the old ones go on
            self._row_generators += slot_generators(self._stream_key, batch_size, start=have)
        return self._row_generators[:batch_size]

    def get_non_inference_attributes(self) -> list[str]:
        return ["network.projection", "network.predictor"]

    # -- acting --------------------------------------------------------------------------------

    def _act(self, batch: dict[str, Any], explore: bool) -> dict[str, Any]:
        obs = batch[Columns.OBS]
        self.network.eval()
        generators = self._generators(obs.shape[0])
        if self.search_algorithm == "gumbel":
            return self._act_gumbel(obs, generators, explore)
        noise, seeds = draw_search_randomness(
            generators, self.num_actions, self.dirichlet_alpha if explore else None
        )
        out = search(self.network, obs, self.mcts_config, noise=noise, seed=seeds)
        visits = out.visit_counts
        policy = (visits / visits.sum(axis=1, keepdims=True)).astype(np.float32)
        if explore:
            temperature = visit_temperature(
                int(self.gradient_steps),
                int(self.model_config["training_steps"]),
                self.model_config["fixed_temperature"],
            )
            actions = sample_actions(visits, temperature, generators)
        else:
            actions = most_visited_actions(visits, generators)
        return {
            Columns.ACTIONS: actions,
            BarlowZeroColumns.MCTS_POLICY: policy,
            BarlowZeroColumns.ROOT_VALUE: np.asarray(out.root_values, dtype=np.float32),
        }

    def _act_gumbel(
        self, obs: torch.Tensor, generators: list[np.random.Generator], explore: bool
    ) -> dict[str, Any]:
        """Gumbel MuZero acting: exploration draws each row's Gumbel noise from its generator,
        inference uses zeros; either way the search picks the action (no temperature)."""
        settings = self.gumbel_settings
        if explore:
            gumbel = draw_gumbel_noise(generators, self.num_actions, settings.gumbel_scale)
        else:
            gumbel = np.zeros((obs.shape[0], self.num_actions), dtype=np.float32)
        out = gumbel_search(self.network, obs, self.mcts_config, gumbel, settings)
        return {
            Columns.ACTIONS: out.action,
            BarlowZeroColumns.MCTS_POLICY: out.improved_policy,
            BarlowZeroColumns.ROOT_VALUE: np.asarray(out.root_values, dtype=np.float32),
            BarlowZeroColumns.VISIT_COUNTS: out.visit_counts,
        }

    def _forward_exploration(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        return self._act(batch, explore=True)

    def _forward_inference(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        return self._act(batch, explore=False)

    # -- learning ------------------------------------------------------------------------------

    def _forward_train(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        """The unroll (see `_unroll`), under bf16 autocast with `mixed_precision` on a GPU; its
        outputs are float32 either way, so the losses are computed in float32."""
        if self.model_config["mixed_precision"] and batch[Columns.OBS].device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = self._unroll(batch)
            return {key: value.float() for key, value in out.items()}
        return self._unroll(batch)

    def _unroll(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Unrolls the model K steps from the observations at t.

        Batch (B samples, K unroll steps):
            obs [B, *obs_shape], actions int64 [B, K], and, unless consistency_loss is "none",
            target_obs [B, K, *obs_shape] (the true observations at t+1..t+K).

        Returns:
            value_logits [B, K+1, S], policy_logits [B, K+1, A], value_prefix_logits [B, K, S],
            and with a consistency loss: online_projection [B, K, D] (from the dynamics' states;
            through the predictor for simsiam) and target_projection [B, K, D].
        """
        cfg = self.model_config
        net = self.network
        obs = batch[Columns.OBS]
        actions = batch[Columns.ACTIONS].long()
        num_unroll = actions.shape[1]
        augmented = bool(self.augmentation) and obs.dim() == 4
        if augmented:
            # On the 0..255 scale: a crop and a per-sample factor commute with the network's /255.
            # uint8 in, float out: the crop runs on the uint8 frames (see `augment`).
            obs = augment(obs, self.augmentation)

        state = net.representation(obs)
        policy_logits, value_logits = net.prediction(state)
        all_policy, all_value, all_prefix, states = [policy_logits], [value_logits], [], []
        lstm_state = net.initial_lstm_state(obs.shape[0], obs.device)
        horizon = cfg["lstm_horizon_len"]
        for k in range(num_unroll):
            if k % horizon == 0:
                lstm_state = net.initial_lstm_state(obs.shape[0], obs.device)
            state, lstm_state, prefix_logits = net.dynamics(state, lstm_state, actions[:, k])
            # EfficientZero: halve the gradient flowing back through each recurrent step.
            state = 0.5 * state + 0.5 * state.detach()
            policy_logits, value_logits = net.prediction(state)
            all_policy.append(policy_logits)
            all_value.append(value_logits)
            all_prefix.append(prefix_logits)
            states.append(state)

        out = {
            BarlowZeroColumns.VALUE_LOGITS: torch.stack(all_value, dim=1),
            BarlowZeroColumns.POLICY_LOGITS: torch.stack(all_policy, dim=1),
            BarlowZeroColumns.VALUE_PREFIX_LOGITS: torch.stack(all_prefix, dim=1),
        }
        if cfg["consistency_loss"] != "none":
            target_obs = batch[BarlowZeroColumns.TARGET_OBS]  # [B, K, *obs_shape]
            if augmented:
                # One shift and one intensity per sample for all K targets (EfficientZero
                # augments a sample's whole target stack at once): channels side by side.
                b, k, c, h, w = target_obs.shape
                stacked = augment(target_obs.reshape(b, k * c, h, w), self.augmentation)
                target_obs = stacked.reshape(b, k, c, h, w)
            flat_target = target_obs.reshape(-1, *target_obs.shape[2:])
            online = torch.stack(states, dim=1)
            online = net.project(online.reshape(-1, *online.shape[2:]), branch="online")
            if cfg["consistency_loss"] == "simsiam":
                # SimSiam (EfficientZero): the target branch carries no gradient.
                with torch.no_grad():
                    target = net.project(net.representation(flat_target), branch="target")
            else:
                # Barlow Twins: symmetric, both branches carry gradient (the paper's point).
                target = net.project(net.representation(flat_target), branch="target")
            out[BarlowZeroColumns.ONLINE_PROJECTION] = online.reshape(obs.shape[0], num_unroll, -1)
            out[BarlowZeroColumns.TARGET_PROJECTION] = target.reshape(obs.shape[0], num_unroll, -1)
        return out
