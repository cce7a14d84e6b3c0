"""Batched MCTS over a BarlowZero network: `cython_mcts.run_mcts` (pUCT) or
`cython_mcts.run_gumbel_mcts` (Gumbel MuZero) with hidden states kept on device.

The tree lives in compiled code on the host; the latents and LSTM states of every simulation stay
in one preallocated tensor per kind on the network's device. Each simulation ships only the
scalars and logits the tree needs (one device->host copy of [B, 2 + A] floats).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cython_mcts import (
    GumbelSearchOutput,
    MCTSConfig,
    RecurrentFn,
    SearchOutput,
    greedy_actions,
    run_gumbel_mcts,
    run_mcts,
)

SEARCH_ALGORITHMS = ("puct", "gumbel")


def mcts_config_from(model_config: Mapping[str, Any]) -> MCTSConfig:
    """The search settings of a BarlowZero model config (value-prefix mode, as EfficientZero)."""
    return MCTSConfig(
        num_simulations=model_config["num_simulations"],
        discount=model_config["discount"],
        pb_c_base=model_config["pb_c_base"],
        pb_c_init=model_config["pb_c_init"],
        root_exploration_fraction=model_config["root_exploration_fraction"],
        value_prefix=True,
        lstm_horizon_len=model_config["lstm_horizon_len"],
        value_delta_max=model_config["value_delta_max"],
    )


def search_algorithm_from(model_config: Mapping[str, Any]) -> str:
    """"puct" or "gumbel". Module checkpoints from before the Gumbel search lack the key: they
    searched with pUCT."""
    return model_config.get("search_algorithm", "puct")


@dataclass(frozen=True)
class GumbelSettings:
    """The Gumbel MuZero settings (their defaults, the paper's and mctx's, are the config's).

    Attributes:
        max_num_considered_actions: root actions sequential halving starts from.
        gumbel_scale: the scale of the Gumbel noise when acting to explore (and in reanalyze
            with `reanalyze_noise`); greedy acting uses none.
        value_scale, maxvisit_init: sigma(q) = (maxvisit_init + max N) * value_scale * q, q the
            completed Q rescaled to [0, 1].
        q_normalization: how it is rescaled: "node" (mctx) or "tree" (EfficientZero V2).
    """

    max_num_considered_actions: int
    gumbel_scale: float
    value_scale: float
    maxvisit_init: float
    q_normalization: str


def gumbel_settings_from(model_config: Mapping[str, Any]) -> GumbelSettings:
    """The Gumbel search settings of a BarlowZero model config. Module checkpoints from before
    `gumbel_q_normalization` lack the key: they searched with "node"."""
    return GumbelSettings(
        max_num_considered_actions=model_config["max_num_considered_actions"],
        gumbel_scale=model_config["gumbel_scale"],
        value_scale=model_config["value_scale"],
        maxvisit_init=model_config["maxvisit_init"],
        q_normalization=model_config.get("gumbel_q_normalization", "node"),
    )


def _device_tree(
    network: torch.nn.Module, obs: torch.Tensor, config: MCTSConfig
) -> tuple[np.ndarray, np.ndarray, RecurrentFn]:
    """The roots' inference and the `recurrent_fn` of one search, hidden states on device.

    Returns:
        root_logits float32 [B, A] and root_values float32 [B] (host), and the `recurrent_fn`
        of `run_mcts` / `run_gumbel_mcts`, which keeps the states of simulation s in row s of
        preallocated device tensors [num_simulations + 1, B, ...] (row 0: the roots').
    """
    root = network.initial_inference(obs)
    batch_size = obs.shape[0]
    device = root.state.device
    num_sims = config.num_simulations
    states = torch.empty((num_sims + 1, *root.state.shape), dtype=root.state.dtype, device=device)
    states[0] = root.state
    h0, c0 = network.initial_lstm_state(batch_size, device)
    hidden = torch.zeros((num_sims + 1, *h0.shape[1:]), dtype=h0.dtype, device=device)
    cell = torch.zeros_like(hidden)
    rows = torch.arange(batch_size, device=device)
    horizon = config.lstm_horizon_len
    simulation = 0

    def recurrent_fn(
        parent_ids: np.ndarray, actions: np.ndarray, depths: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        nonlocal simulation
        simulation += 1
        parents = torch.from_numpy(np.asarray(parent_ids, dtype=np.int64)).to(device)
        # The LSTM starts from zero when expanding from a depth that is a multiple of the horizon.
        keep = torch.from_numpy((np.asarray(depths) - 1) % horizon != 0).to(device)[:, None]
        h = torch.where(keep, hidden[parents, rows], 0.0)[None]
        c = torch.where(keep, cell[parents, rows], 0.0)[None]
        action = torch.from_numpy(np.asarray(actions, dtype=np.int64)).to(device)
        out = network.recurrent_inference(states[parents, rows], (h, c), action)
        states[simulation] = out.state
        hidden[simulation] = out.lstm_state[0][0]
        cell[simulation] = out.lstm_state[1][0]
        host = torch.cat(
            [out.value_prefix[:, None], out.value[:, None], out.policy_logits], dim=1
        ).float().cpu().numpy()
        return host[:, 0].copy(), host[:, 1].copy(), np.ascontiguousarray(host[:, 2:])

    root_host = torch.cat([root.value[:, None], root.policy_logits], dim=1).float().cpu().numpy()
    return (np.ascontiguousarray(root_host[:, 1:]), np.ascontiguousarray(root_host[:, 0]),
            recurrent_fn)


@torch.no_grad()
def search(
    network: torch.nn.Module,
    obs: torch.Tensor,
    config: MCTSConfig,
    *,
    noise: np.ndarray | None = None,
    legal_actions: np.ndarray | None = None,
    seed: int | np.ndarray = 0,
) -> SearchOutput:
    """Runs one batched pUCT search (`run_mcts`) from the observations `obs`.

    Args:
        network: a `BarlowZeroNetwork` (eval mode is the caller's business).
        obs: [B, *obs_shape] stacked observations on the network's device.
        config: the search settings; `config.lstm_horizon_len` drives the LSTM resets.
        noise: float32 [B, A] Dirichlet noise for the roots, or None.
        legal_actions: bool [B, A], or None for all legal.
        seed: the tie-breaking streams of `run_mcts` (an int, or one per root [B]).

    Returns:
        `SearchOutput` with visit_counts [B, A] and root_values [B].
    """
    root_logits, root_values, recurrent_fn = _device_tree(network, obs, config)
    return run_mcts(root_logits, root_values, recurrent_fn, config, noise=noise,
                    legal_actions=legal_actions, seed=seed)


@torch.no_grad()
def gumbel_search(
    network: torch.nn.Module,
    obs: torch.Tensor,
    config: MCTSConfig,
    gumbel: np.ndarray,
    settings: GumbelSettings,
    *,
    legal_actions: np.ndarray | None = None,
) -> GumbelSearchOutput:
    """Runs one batched Gumbel MuZero search (`run_gumbel_mcts`) from the observations `obs`.

    Args:
        network: a `BarlowZeroNetwork` (eval mode is the caller's business).
        obs: [B, *obs_shape] stacked observations on the network's device.
        config: the search settings (`num_simulations`, `discount`, `lstm_horizon_len`, and
            `value_delta_max` with q_normalization "tree"; the pUCT constants are not used).
        gumbel: float32 [B, A], Gumbel(0, 1) noise already times `settings.gumbel_scale`
            (`draw_gumbel_noise`), or zeros for greedy play.
        settings: `max_num_considered_actions`, `value_scale`, `maxvisit_init` and
            `q_normalization` are used here.
        legal_actions: bool [B, A], or None for all legal.

    Returns:
        `GumbelSearchOutput` with action [B], improved_policy [B, A], visit_counts [B, A] and
        root_values [B].
    """
    root_logits, root_values, recurrent_fn = _device_tree(network, obs, config)
    return run_gumbel_mcts(
        root_logits, root_values, recurrent_fn, config, gumbel, legal_actions=legal_actions,
        max_num_considered_actions=settings.max_num_considered_actions,
        value_scale=settings.value_scale, maxvisit_init=settings.maxvisit_init,
        q_normalization=settings.q_normalization,
    )


def visit_temperature(
    gradient_steps: int, training_steps: int, fixed_temperature: float | None = None
) -> float:
    """The acting temperature: `fixed_temperature` when given, else EfficientZero's schedule
    (1.0, then 0.5 at 50% and 0.25 at 75% of training)."""
    if fixed_temperature is not None:
        return float(fixed_temperature)
    if gradient_steps < 0.5 * training_steps:
        return 1.0
    if gradient_steps < 0.75 * training_steps:
        return 0.5
    return 0.25


def slot_generators(key: tuple[int, ...], count: int, start: int = 0) -> list[np.random.Generator]:
    """Independent generators for slots start..count-1, slot i's seeded from the entropy (*key, i).

    `key` names the owner (the config seed, then e.g. an env runner's index); slot i's generator
    drives everything random about its search and action, so no two slots share a stream and a
    seed reproduces them all.
    """
    return [np.random.default_rng([*key, i]) for i in range(start, count)]


def draw_search_randomness(
    generators: list[np.random.Generator], num_actions: int, dirichlet_alpha: float | None
) -> tuple[np.ndarray | None, np.ndarray]:
    """One root's Dirichlet noise (None when `dirichlet_alpha` is None) and tie seed per slot.

    Returns:
        noise float32 [B, A] or None, and seeds uint64 [B] for `run_mcts(seed=...)`.
    """
    noise = None
    if dirichlet_alpha is not None:
        alpha = np.full(num_actions, float(dirichlet_alpha))
        noise = np.stack([g.dirichlet(alpha) for g in generators]).astype(np.float32)
    seeds = np.array([g.integers(2**63, dtype=np.uint64) for g in generators], dtype=np.uint64)
    return noise, seeds


def draw_gumbel_noise(
    generators: list[np.random.Generator], num_actions: int, gumbel_scale: float
) -> np.ndarray:
    """One root's Gumbel noise per slot for `gumbel_search`: row b is `gumbel_scale` times
    `generators[b].gumbel(size=num_actions)` (one draw per slot, nothing else).

    Returns:
        float32 [B, A].
    """
    noise = np.stack([g.gumbel(size=num_actions) for g in generators]) * float(gumbel_scale)
    return noise.astype(np.float32)


def sample_actions(
    visit_counts: np.ndarray, temperature: float, generators: list[np.random.Generator]
) -> np.ndarray:
    """Samples one action per row with probability proportional to visits ** (1 / temperature).

    Args:
        visit_counts: int [B, A]; row b is sampled with `generators[b]`.
    Returns:
        int64 [B].
    """
    counts = np.asarray(visit_counts, dtype=np.float64)
    weights = counts ** (1.0 / temperature)
    probs = weights / weights.sum(axis=1, keepdims=True)
    return np.array(
        [g.choice(probs.shape[1], p=p) for g, p in zip(generators, probs, strict=True)],
        dtype=np.int64,
    )


def most_visited_actions(
    visit_counts: np.ndarray, generators: list[np.random.Generator]
) -> np.ndarray:
    """The most visited action per row, ties chosen uniformly with that row's generator.

    Args:
        visit_counts: int [B, A].
    Returns:
        int64 [B].
    """
    return np.array(
        [greedy_actions(row[None], g)[0] for g, row in zip(generators, visit_counts, strict=True)],
        dtype=np.int64,
    )
