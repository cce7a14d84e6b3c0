"""Unroll targets of BarlowZero / EfficientZero from sampled replay windows (pure numpy).

Notation: B samples, each at step t of its episode; K = num_unroll_steps; td = td_steps; n the
(per-sample, off-policy corrected) n-step horizon, 1 <= n <= td; T the index of the episode's
final frame; ``steps_left`` = T - t when the end lies inside the window, else a number larger
than the window (``SampledWindows.steps_left``). Window position j means step t + j: its stacked
observation is ``stack_frames(windows.frames, j + n_stack - 1, n_stack, per_row=True)`` and its
stored search value is ``windows.root_values[:, j]``.

The algorithm calls::

    n = off_policy_td_steps(learner_step, windows.collected_at, td_steps,
                            auto_td_steps_ratio, training_steps)
    positions = bootstrap_positions(windows, n, K)      # [B, K+1] window positions
    bootstrap_values = <target-model values of the stacked observations at positions>
    targets = make_unroll_targets(windows, bootstrap_values, n, discount, K, lstm_horizon_len)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rllib_barlowzero.replay_buffer import SampledWindows

__all__ = [
    "UnrollTargets",
    "bootstrap_positions",
    "consistency_mask",
    "make_unroll_targets",
    "off_policy_td_steps",
    "policy_mask",
    "value_mask",
    "value_prefix_targets",
    "value_targets",
]


@dataclass
class UnrollTargets:
    """Learner targets for a K-step unroll from B sampled steps t.

    Attributes:
        value: float32 [B, K+1], n-step value targets z_{t+k}.
        value_prefix: float32 [B, K+1], value-prefix targets; index 0 is 0, index k >= 1 is the
            prediction target after the k-th unroll action.
        policy: float32 [B, K+1, A], stored search policies pi_{t+k} (zeros past the end).
        policy_mask: float32 [B, K+1], 1 where t+k < T (a real step with a search policy).
        value_mask: float32 [B, K+1], 1 where t+k < T, or everywhere if the episode terminated
            inside the window (the value after a termination is truly 0); 0 past a truncated end.
        consistency_mask: float32 [B, K], entry k-1 for unroll step k = 1..K: 1 where the
            observation o_{t+k} exists (t+k <= T).
        actions: int64 [B, K], a_t .. a_{t+K-1} (random past the end) for the unroll.
    """

    value: np.ndarray
    value_prefix: np.ndarray
    policy: np.ndarray
    policy_mask: np.ndarray
    value_mask: np.ndarray
    consistency_mask: np.ndarray
    actions: np.ndarray


def off_policy_td_steps(
    current_step: int | np.ndarray,
    collected_at: int | np.ndarray,
    td_steps: int,
    auto_td_steps_ratio: float,
    training_steps: int,
) -> np.ndarray:
    """EfficientZero's off-policy correction of the n-step horizon.

    n = clip(td_steps - floor(age / (auto_td_steps_ratio * training_steps)), 1, td_steps), with
    age = current_step - collected_at in training steps. The division is a true (float) division
    followed by floor, as Python's ``int // float``: with the defaults (0.3 * 120000 = 36000)
    data played 0..35999 steps ago gets n = td_steps, 36000..71999 steps ago td_steps - 1, ...
    A negative age (data newer than current_step) gives td_steps.

    Args:
        current_step: the learner's training-step counter now (int or int array broadcastable
            against collected_at).
        collected_at: int [B] (or scalar), training step at which each sample was played.
        td_steps: the largest horizon (>= 1).
        auto_td_steps_ratio: fraction of training_steps per unit of shrinkage (> 0).
        training_steps: total training steps (> 0).

    Returns:
        int64 array with the broadcast shape of current_step and collected_at, in [1, td_steps].
    """
    if td_steps < 1:
        raise ValueError(f"td_steps must be >= 1, got {td_steps}")
    divisor = float(auto_td_steps_ratio) * float(training_steps)
    if not divisor > 0:
        raise ValueError(
            "auto_td_steps_ratio * training_steps must be > 0, got "
            f"{auto_td_steps_ratio} * {training_steps}"
        )
    age = np.asarray(current_step, dtype=np.int64) - np.asarray(collected_at, dtype=np.int64)
    shrink = np.floor(age / divisor).astype(np.int64)
    return np.clip(td_steps - shrink, 1, td_steps).astype(np.int64)


def _as_horizon(n: int | np.ndarray, batch: int) -> np.ndarray:
    n_arr = np.broadcast_to(np.asarray(n, dtype=np.int64), (batch,)).copy()
    if n_arr.size and n_arr.min() < 0:
        raise ValueError(
            f"n: expected n-step horizons >= 0 of shape [{batch}], got min {n_arr.min()}"
        )
    return n_arr


def _steps_left(windows_or_steps_left: SampledWindows | np.ndarray) -> np.ndarray:
    if isinstance(windows_or_steps_left, SampledWindows):
        return np.asarray(windows_or_steps_left.steps_left, dtype=np.int64)
    return np.asarray(windows_or_steps_left, dtype=np.int64)


def bootstrap_positions(
    windows: SampledWindows | np.ndarray, n: int | np.ndarray, num_unroll_steps: int
) -> np.ndarray:
    """Window positions whose value the caller must supply as ``bootstrap_values``.

    For unroll step k the bootstrap observation is o_{t+k+n}, capped at the episode's final
    frame o_T (truncated end): position min(k + n, steps_left). Past a terminated end the value
    is not used (the bootstrap is 0), but the position is still a valid frame.

    Args:
        windows: the sampled windows (or their ``steps_left`` int [B]).
        n: int or int [B], n-step horizons (<= td_steps, so positions stay inside the window).
        num_unroll_steps: K.

    Returns:
        int64 [B, K+1]; position j means step t + j: stacked observation
        ``stack_frames(windows.frames, j + n_stack - 1, n_stack, per_row=True)``, stored search
        value ``windows.root_values[:, j]``.
    """
    steps_left = _steps_left(windows)
    n_arr = _as_horizon(n, steps_left.shape[0])
    k = np.arange(num_unroll_steps + 1, dtype=np.int64)[None, :]
    return np.minimum(k + n_arr[:, None], steps_left[:, None])


def value_targets(
    rewards: np.ndarray,
    bootstrap_values: np.ndarray,
    steps_left: np.ndarray,
    terminated: np.ndarray,
    n: int | np.ndarray,
    discount: float,
    num_unroll_steps: int,
) -> np.ndarray:
    """n-step value targets z_{t+k}, k = 0..K.

    z_{t+k} = sum_{i < h} discount^i r_{t+k+i} + discount^h * bootstrap_k, where
    h = min(n, max(T - t - k, 0)) (t+k+n capped at T), and the bootstrap term is 0 when the
    episode terminated and t+k+n >= T. Rewards at or past the end count as 0. For a truncated
    end (or an episode going on) ``bootstrap_values[:, k]`` must be the value at window position
    ``bootstrap_positions(...)[:, k]`` = k + h.

    Args:
        rewards: float [B, R] rewards r_t .. r_{t+R-1} with R >= K + max(n).
        bootstrap_values: float [B, K+1], value of the observation at t + k + h.
        steps_left: int [B], ``SampledWindows.steps_left``.
        terminated: bool [B], ``SampledWindows.terminated``.
        n: int or int [B], n-step horizons.
        discount: per-step discount.
        num_unroll_steps: K.

    Returns:
        float32 [B, K+1].
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    batch, num_rewards = rewards.shape
    big_k = int(num_unroll_steps)
    bootstrap_values = np.asarray(bootstrap_values, dtype=np.float64)
    if bootstrap_values.shape != (batch, big_k + 1):
        raise ValueError(
            f"bootstrap_values: expected shape [{batch}, {big_k + 1}] ([B, K+1]), got "
            f"{bootstrap_values.shape}"
        )
    steps_left = np.asarray(steps_left, dtype=np.int64).reshape(batch)
    terminated = np.asarray(terminated, dtype=bool).reshape(batch)
    n_arr = _as_horizon(n, batch)
    max_n = int(n_arr.max()) if batch else 0
    if big_k + max_n > num_rewards:
        raise ValueError(
            f"rewards: expected shape [{batch}, >= {big_k + max_n}] (K + max n), got "
            f"{rewards.shape}"
        )
    k = np.arange(big_k + 1, dtype=np.int64)[None, :]  # [1, K+1]
    horizon = np.minimum(n_arr[:, None], np.maximum(steps_left[:, None] - k, 0))  # [B, K+1]
    i = np.arange(max_n, dtype=np.int64)[None, None, :]  # [1, 1, max_n]
    reward_idx = np.minimum(k[:, :, None] + i, max(num_rewards - 1, 0))  # [1, K+1, max_n]
    gathered = rewards[np.arange(batch)[:, None, None], reward_idx]  # [B, K+1, max_n]
    use = i < horizon[:, :, None]
    discounted = np.where(use, gathered * discount ** i.astype(np.float64), 0.0).sum(axis=2)
    dead = terminated[:, None] & (k + n_arr[:, None] >= steps_left[:, None])
    bootstrap = np.where(dead, 0.0, discount ** horizon.astype(np.float64) * bootstrap_values)
    return (discounted + bootstrap).astype(np.float32)


def value_prefix_targets(
    rewards: np.ndarray, steps_left: np.ndarray, num_unroll_steps: int, lstm_horizon_len: int
) -> np.ndarray:
    """EfficientZero's value-prefix targets.

    Index 0 is 0. For k = 1..K: the sum of r_{t+s} for s from the last reset to k-1, where the
    sum resets before step s whenever s % lstm_horizon_len == 0 (i.e. at unroll steps k with
    (k-1) % lstm_horizon_len == 0), matching the dynamics LSTM's reset. Rewards at or past the
    episode end count as 0.

    Args:
        rewards: float [B, R], r_t .. with R >= K.
        steps_left: int [B], ``SampledWindows.steps_left``.
        num_unroll_steps: K.
        lstm_horizon_len: reset period (>= 1).

    Returns:
        float32 [B, K+1].
    """
    if lstm_horizon_len < 1:
        raise ValueError(f"lstm_horizon_len must be >= 1, got {lstm_horizon_len}")
    rewards = np.asarray(rewards, dtype=np.float64)
    batch = rewards.shape[0]
    big_k = int(num_unroll_steps)
    if rewards.ndim != 2 or rewards.shape[1] < big_k:
        raise ValueError(f"rewards: expected shape [{batch}, >= {big_k}] ([B, >= K]), got "
                         f"{rewards.shape}")
    steps_left = np.asarray(steps_left, dtype=np.int64).reshape(batch)
    s = np.arange(big_k, dtype=np.int64)
    r = np.where(s[None, :] < steps_left[:, None], rewards[:, :big_k], 0.0)  # [B, K]
    cumulative = np.concatenate([np.zeros((batch, 1)), np.cumsum(r, axis=1)], axis=1)  # [B, K+1]
    reset_at = (s // lstm_horizon_len) * lstm_horizon_len  # first step of each s's group
    out = np.zeros((batch, big_k + 1))
    out[:, 1:] = cumulative[:, s + 1] - cumulative[:, reset_at]
    return out.astype(np.float32)


def policy_mask(steps_left: np.ndarray, num_unroll_steps: int) -> np.ndarray:
    """float32 [B, K+1]: 1 where t+k < T (a real step with a search policy)."""
    k = np.arange(num_unroll_steps + 1)[None, :]
    return (k < np.asarray(steps_left)[:, None]).astype(np.float32)


def value_mask(steps_left: np.ndarray, terminated: np.ndarray, num_unroll_steps: int) -> np.ndarray:
    """float32 [B, K+1]: 1 where t+k < T or the episode terminated (0 past a truncated end)."""
    k = np.arange(num_unroll_steps + 1)[None, :]
    real = k < np.asarray(steps_left)[:, None]
    return (real | np.asarray(terminated, dtype=bool)[:, None]).astype(np.float32)


def consistency_mask(steps_left: np.ndarray, num_unroll_steps: int) -> np.ndarray:
    """float32 [B, K], entry k-1 for k = 1..K: 1 where the observation o_{t+k} exists."""
    k = np.arange(1, num_unroll_steps + 1)[None, :]
    return (k <= np.asarray(steps_left)[:, None]).astype(np.float32)


def make_unroll_targets(
    windows: SampledWindows,
    bootstrap_values: np.ndarray,
    n: int | np.ndarray,
    discount: float,
    num_unroll_steps: int,
    lstm_horizon_len: int,
) -> UnrollTargets:
    """All unroll targets for a batch of windows.

    Args:
        windows: from ``GameSegmentReplayBuffer.sample``.
        bootstrap_values: float [B, K+1], values at ``bootstrap_positions(windows, n, K)``.
        n: int or int [B], n-step horizons (``off_policy_td_steps``), each <= td_steps.
        discount: per-step discount.
        num_unroll_steps: K (must match the windows).
        lstm_horizon_len: value-prefix reset period.

    Returns:
        ``UnrollTargets``.
    """
    big_k = int(num_unroll_steps)
    if windows.num_unroll_steps != big_k:
        raise ValueError(
            f"num_unroll_steps is {big_k} but the windows were sampled with K = "
            f"{windows.num_unroll_steps} (policies of shape {windows.policies.shape})"
        )
    steps_left, terminated = windows.steps_left, windows.terminated
    return UnrollTargets(
        value=value_targets(windows.rewards, bootstrap_values, steps_left, terminated, n,
                            discount, big_k),
        value_prefix=value_prefix_targets(windows.rewards, steps_left, big_k, lstm_horizon_len),
        policy=np.asarray(windows.policies, dtype=np.float32),
        policy_mask=policy_mask(steps_left, big_k),
        value_mask=value_mask(steps_left, terminated, big_k),
        consistency_mask=consistency_mask(steps_left, big_k),
        actions=np.asarray(windows.actions[:, :big_k], dtype=np.int64),
    )
