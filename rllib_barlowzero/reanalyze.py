"""Reanalyze: fresh training targets from the target model (EfficientZero, section 4.3).

For a batch of sampled windows it computes
  * value targets: n-step returns bootstrapped from the target model's value of the observation
    n steps later, with n shrunk for old data (off-policy correction);
  * policy targets: a fresh batched search with the target model for
    `revisit_policy_search_rate` of the samples (normalised visit counts for pUCT, the improved
    policy for search_algorithm "gumbel"), the stored search policy for the rest;
and assembles the learner's batch.

Batch i's randomness (which samples are re-searched, their root noise and tie-breaking) comes from
one generator seeded with (seed, i), so it does not depend on which thread or worker makes it.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from ray.rllib.core.columns import Columns

from rllib_barlowzero.columns import BarlowZeroColumns
from rllib_barlowzero.env.frame_stacking import stack_frames
from rllib_barlowzero.replay_buffer import SampledWindows
from rllib_barlowzero.streams import REANALYZE_STREAM
from rllib_barlowzero.targets import (
    bootstrap_positions,
    make_unroll_targets,
    off_policy_td_steps,
)
from rllib_barlowzero.torch.search import (
    gumbel_search,
    gumbel_settings_from,
    mcts_config_from,
    search,
    search_algorithm_from,
)


class Reanalyzer:
    """Holds the target model and turns sampled windows into a learner batch.

    Args:
        network: a `BarlowZeroNetwork` to copy as the target model (its weights are refreshed
            with `set_weights` every `target_update_interval` gradient steps).
        config: the `BarlowZeroConfig`.
        device: where the target model runs.
        seed: with the batch index, seeds each batch's random draws (an int >= 0).
    """

    def __init__(self, network: torch.nn.Module, config: Any, seed: int,
                 device: str = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        self.target_network = copy.deepcopy(network).to(self.device).eval()
        for p in self.target_network.parameters():
            p.requires_grad_(False)
        model_config = config.model_config
        self.mcts_config = mcts_config_from(model_config)
        self.gumbel_settings = (gumbel_settings_from(model_config)
                                if search_algorithm_from(model_config) == "gumbel" else None)
        self.seed = int(seed)

    def set_weights(self, network_state: dict[str, Any]) -> None:
        """Loads the online network's weights (a state dict of the network, numpy or torch)."""
        state = {k: torch.as_tensor(v) for k, v in network_state.items()}
        self.target_network.load_state_dict(state, strict=False)

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if self.device.type == "cuda":  # a pinned host copy, so the transfer is a DMA
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    @torch.no_grad()
    def _values(self, obs: np.ndarray) -> np.ndarray:
        """Target-model values [N] of stacked observations [N, *obs_shape]."""
        out = self.target_network.initial_inference(self._to_device(obs))
        return out.value.float().cpu().numpy()

    def make_batch(
        self, windows: SampledWindows, learner_step: int, batch_index: int
    ) -> dict[str, np.ndarray]:
        """The learner batch for `windows` (B samples, K unroll steps), as numpy arrays.

        `learner_step` (the learner's gradient-step count) sets the off-policy horizon;
        `batch_index` (the update this batch is for) seeds the batch's random draws.

        Returns keys: obs [B, *obs], actions [B, K], target_obs [B, K, *obs] (with a consistency
        loss), target_value / target_value_prefix [B, K+1], target_policy [B, K+1, A],
        value_mask / policy_mask [B, K+1], consistency_mask [B, K], weights [B], td_steps [B].
        """
        cfg = self.config
        num_unroll, n_stack = cfg.num_unroll_steps, cfg.stacked_observations
        batch_size = windows.frames.shape[0]

        n = off_policy_td_steps(
            learner_step, windows.collected_at, cfg.td_steps, cfg.auto_td_steps_ratio,
            cfg.training_steps,
        )
        # Values of the observations at t+k+n (capped at a truncated end), from the target model.
        positions = bootstrap_positions(windows, n, num_unroll)  # [B, K+1] indices into frames
        bootstrap_obs = stack_frames(windows.frames, positions + n_stack - 1, n_stack,
                                     per_row=True)  # [B, K+1, *obs]
        bootstrap_values = self._values(
            bootstrap_obs.reshape(-1, *bootstrap_obs.shape[2:])
        ).reshape(batch_size, num_unroll + 1)
        targets = make_unroll_targets(
            windows, bootstrap_values, n, cfg.discount, num_unroll, cfg.lstm_horizon_len
        )

        unroll_positions = np.broadcast_to(np.arange(num_unroll + 1), (batch_size, num_unroll + 1))
        obs_steps = stack_frames(windows.frames, unroll_positions + n_stack - 1, n_stack,
                                 per_row=True)  # [B, K+1, *obs]
        policy = targets.policy.copy()
        rng = np.random.default_rng([self.seed, REANALYZE_STREAM, int(batch_index)])
        revisit = rng.random(batch_size) < cfg.revisit_policy_search_rate
        if revisit.any():
            # Fresh searches from every real step t+k of the chosen samples, with root noise
            # unless `reanalyze_noise` is off (EfficientZero and LightZero search with it).
            chosen = revisit[:, None] & (targets.policy_mask > 0)
            b_idx, k_idx = np.nonzero(chosen)
            if len(b_idx):
                roots = self._to_device(obs_steps[b_idx, k_idx])
                if self.gumbel_settings is not None:
                    policy[b_idx, k_idx] = self._gumbel_policy(roots, policy.shape[2], rng)
                else:
                    policy[b_idx, k_idx] = self._puct_policy(roots, policy.shape[2], rng)

        batch = {
            Columns.OBS: obs_steps[:, 0],
            Columns.ACTIONS: targets.actions.astype(np.int64),
            BarlowZeroColumns.TARGET_VALUE: targets.value.astype(np.float32),
            BarlowZeroColumns.TARGET_VALUE_PREFIX: targets.value_prefix.astype(np.float32),
            BarlowZeroColumns.TARGET_POLICY: policy.astype(np.float32),
            BarlowZeroColumns.VALUE_MASK: targets.value_mask.astype(np.float32),
            BarlowZeroColumns.POLICY_MASK: targets.policy_mask.astype(np.float32),
            BarlowZeroColumns.CONSISTENCY_MASK: targets.consistency_mask.astype(np.float32),
            BarlowZeroColumns.WEIGHTS: windows.weights.astype(np.float32),
            BarlowZeroColumns.TD_STEPS: n.astype(np.int64),
        }
        if cfg.consistency_loss != "none":
            batch[BarlowZeroColumns.TARGET_OBS] = obs_steps[:, 1:]
        return batch

    def _puct_policy(
        self, roots: torch.Tensor, num_actions: int, rng: np.random.Generator
    ) -> np.ndarray:
        """Normalised visit counts [N, A] of a pUCT search from `roots` [N, *obs] with the target
        model: Dirichlet root noise when `reanalyze_noise`, then the search's tie seed, both
        drawn from the batch's generator."""
        noise = None
        if self.config.reanalyze_noise:
            alpha = np.full(num_actions, self.config.dirichlet_alpha)
            noise = rng.dirichlet(alpha, size=roots.shape[0]).astype(np.float32)
        out = search(self.target_network, roots, self.mcts_config, noise=noise,
                     seed=int(rng.integers(2**63)))
        visits = out.visit_counts.astype(np.float32)
        return visits / visits.sum(axis=1, keepdims=True)

    def _gumbel_policy(
        self, roots: torch.Tensor, num_actions: int, rng: np.random.Generator
    ) -> np.ndarray:
        """Improved policies [N, A] of a Gumbel search from `roots` [N, *obs] with the target model.

        The improved policy softmax(logits + sigma(completed Q)) depends on the root noise only
        through the visits: which actions are considered (the top `max_num_considered_actions` by
        noise + logits) and which survive sequential halving, i.e. whose Q is estimated and how
        well. With `reanalyze_noise` each re-search draws fresh Gumbel noise times
        `gumbel_scale` from the batch's generator (after the revisit draws), as acting does, so
        re-searched targets are made like the acting-time targets they replace and, when there
        are more legal actions than considered ones, do not always leave the prior's lowest
        actions at the mixed value. Without it the noise is zero and the search is
        deterministic (it has no tie-breaking stream, so nothing more is drawn).
        """
        settings = self.gumbel_settings
        shape = (roots.shape[0], num_actions)
        gumbel = np.zeros(shape, dtype=np.float32)
        if self.config.reanalyze_noise:
            gumbel = (rng.gumbel(size=shape) * settings.gumbel_scale).astype(np.float32)
        out = gumbel_search(self.target_network, roots, self.mcts_config, gumbel, settings)
        return out.improved_policy
