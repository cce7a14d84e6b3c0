"""Unroll targets against hand-computed numbers and against a one-array reference."""

from __future__ import annotations

import numpy as np
import pytest

from rllib_barlowzero.env.frame_stacking import stack_frames
from rllib_barlowzero.replay_buffer import GameSegmentReplayBuffer, SampledWindows
from rllib_barlowzero.targets import (
    UnrollTargets,
    bootstrap_positions,
    consistency_mask,
    make_unroll_targets,
    off_policy_td_steps,
    policy_mask,
    value_mask,
    value_prefix_targets,
    value_targets,
)


def test_off_policy_td_steps():
    # divisor 0.3 * 100 = 30 training steps per unit of shrinkage
    collected_at = np.array([100, 71, 70, 41, 40, 0, -1000, 101])
    n = off_policy_td_steps(100, collected_at, 5, 0.3, 100)
    np.testing.assert_array_equal(n, [5, 5, 4, 4, 3, 2, 1, 5])
    assert n.dtype == np.int64
    # The paper's defaults: 0.3 * 120000 = 36000.
    n = off_policy_td_steps(72_000, np.array([36_001, 36_000, 0]), 5, 0.3, 120_000)
    np.testing.assert_array_equal(n, [5, 4, 3])
    with pytest.raises(ValueError, match="auto_td_steps_ratio"):
        off_policy_td_steps(0, np.zeros(2), 5, 0.0, 100)


def test_value_prefix_with_horizon_reset():
    rewards = np.array([[1, 2, 3, 4, 5, 6, 7]] * 2, dtype=np.float32)
    on = np.array([8, 8])
    np.testing.assert_array_equal(value_prefix_targets(rewards, on, 5, 2)[0], [0, 1, 3, 3, 7, 5])
    np.testing.assert_array_equal(value_prefix_targets(rewards, on, 5, 3)[0], [0, 1, 3, 6, 4, 9])
    np.testing.assert_array_equal(value_prefix_targets(rewards, on, 5, 5)[0], [0, 1, 3, 6, 10, 15])
    np.testing.assert_array_equal(value_prefix_targets(rewards, on, 5, 1)[0], [0, 1, 2, 3, 4, 5])
    # Episode ends after 3 steps: rewards from step 3 on count as 0 (even if the input has some).
    out = value_prefix_targets(rewards, np.array([3, 8]), 5, 2)
    np.testing.assert_array_equal(out, [[0, 1, 3, 3, 3, 0], [0, 1, 3, 3, 7, 5]])
    assert out.dtype == np.float32


def test_value_targets_n_step_bootstrap_terminated_vs_truncated():
    # discount 0.5, K = 2, n = 2; rewards r_t.. and bootstrap values for k = 0, 1, 2.
    rewards = np.tile(np.array([1, 2, 4, 8, 16], np.float32), (6, 1))
    boot = np.tile(np.array([10, 20, 40], np.float32), (6, 1))
    steps_left = np.array([6, 3, 3, 1, 1, 6])
    terminated = np.array([False, True, False, True, False, False])
    n = np.array([2, 2, 2, 2, 2, 3])
    z = value_targets(rewards, boot, steps_left, terminated, n, 0.5, 2)
    expected = [
        [1 + 1 + 2.5, 2 + 2 + 5, 4 + 4 + 10],  # goes on: r + 0.5 r' + 0.25 v
        [1 + 1 + 2.5, 2 + 2 + 0, 4 + 0],  # terminated at T = t + 3: no bootstrap at/after T
        [1 + 1 + 2.5, 2 + 2 + 5, 4 + 0.5 * 40],  # truncated at t + 3: bootstrap capped at o_T
        [1, 0, 0],  # terminated after one step
        [1 + 0.5 * 10, 20, 40],  # truncated after one step (k >= 1 is masked by value_mask)
        [1 + 1 + 1 + 0.125 * 10, 2 + 2 + 2 + 0.125 * 20, 4 + 4 + 4 + 0.125 * 40],  # n = 3
    ]
    np.testing.assert_allclose(z, expected, rtol=1e-6)
    assert z.dtype == np.float32
    positions = bootstrap_positions(steps_left, n, 2)
    np.testing.assert_array_equal(
        positions, [[2, 3, 4], [2, 3, 3], [2, 3, 3], [1, 1, 1], [1, 1, 1], [3, 4, 5]]
    )
    with pytest.raises(ValueError, match="bootstrap_values"):
        value_targets(rewards, boot[:, :2], steps_left, terminated, n, 0.5, 2)
    with pytest.raises(ValueError, match="rewards"):
        value_targets(rewards, boot, steps_left, terminated, 4, 0.5, 2)


def test_masks_at_the_episode_end():
    steps_left = np.array([8, 3, 3, 1])
    terminated = np.array([False, True, False, True])
    np.testing.assert_array_equal(
        policy_mask(steps_left, 3), [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 0], [1, 0, 0, 0]]
    )
    np.testing.assert_array_equal(
        value_mask(steps_left, terminated, 3),
        [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]],
    )
    np.testing.assert_array_equal(
        consistency_mask(steps_left, 3), [[1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 0, 0]]
    )


# ----------------------------------------------------------------------------------------------
# Through the buffer: a 6-step episode in segments of 3 (K = 2, td = 2, n = 2, discount 0.5).
# Frames are vectors [2] = (step, 0); the "target model" value of a stacked observation is
# 100 + the step of its newest frame, so v(o_s) = 100 + s.

K, TD, N_STACK, DISCOUNT = 2, 2, 2, 0.5


def _six_step_buffer(terminated: bool, history_length: int = 3) -> GameSegmentReplayBuffer:
    buffer = GameSegmentReplayBuffer(100, history_length=history_length,
                                     stacked_observations=N_STACK, num_unroll_steps=K,
                                     td_steps=TD, seed=0)
    obs = np.zeros((7, 2), np.float32)
    obs[:, 0] = np.arange(7)
    policy = np.eye(3, dtype=np.float32)[np.arange(6) % 3]
    rewards = np.arange(1, 7, dtype=np.float32)
    for a, b in ((0, 1), (1, 4), (4, 6)):  # chunks of 1, 3 and 2 steps
        buffer.add_episode_chunk("e", obs[a : b + 1], np.arange(a, b) % 3, rewards[a:b],
                                 policy[a:b], np.zeros(b - a), terminated=terminated and b == 6,
                                 truncated=not terminated and b == 6, collected_at=a)
    return buffer


def _model_values(windows: SampledWindows, positions: np.ndarray) -> np.ndarray:
    out = np.empty(positions.shape, np.float32)
    for k in range(positions.shape[1]):
        stacked = stack_frames(windows.frames, positions[:, k] + N_STACK - 1, N_STACK,
                               per_row=True)  # [B, 2 * 2]
        out[:, k] = 100 + stacked[:, -2]  # newest frame's step
    return out


def _targets_by_step(buffer: GameSegmentReplayBuffer, n: int = 2) -> dict[int, UnrollTargets]:
    windows = buffer.sample(len(buffer))
    positions = bootstrap_positions(windows, n, K)
    targets = make_unroll_targets(windows, _model_values(windows, positions), n, DISCOUNT, K,
                                  lstm_horizon_len=5)
    by_step = {}
    for b, t in enumerate(windows.steps.tolist()):
        by_step[t] = UnrollTargets(**{f: getattr(targets, f)[b] for f in
                                      targets.__dataclass_fields__})
    assert sorted(by_step) == list(range(6))
    return by_step


def test_targets_across_segment_boundary_and_near_the_end_terminated():
    by_step = _targets_by_step(_six_step_buffer(terminated=True))
    # t = 2 is the last step of the first segment: its unroll runs into the second one.
    t2 = by_step[2]
    np.testing.assert_allclose(t2.value, [3 + 0.5 * 4 + 0.25 * 104, 4 + 0.5 * 5 + 0.25 * 105,
                                          5 + 0.5 * 6 + 0])  # t+k+n = 6 = T: terminated
    np.testing.assert_allclose(t2.value_prefix, [0, 3, 7])
    np.testing.assert_array_equal(t2.actions, [2, 0])
    np.testing.assert_array_equal(t2.policy, np.eye(3)[[2, 0, 1]])
    np.testing.assert_array_equal(t2.policy_mask, [1, 1, 1])
    np.testing.assert_array_equal(t2.value_mask, [1, 1, 1])
    np.testing.assert_array_equal(t2.consistency_mask, [1, 1])
    # t = 4: two steps before the end.
    t4 = by_step[4]
    np.testing.assert_allclose(t4.value, [5 + 0.5 * 6, 6, 0])
    np.testing.assert_allclose(t4.value_prefix, [0, 5, 11])
    np.testing.assert_array_equal(t4.policy_mask, [1, 1, 0])
    np.testing.assert_array_equal(t4.value_mask, [1, 1, 1])
    np.testing.assert_array_equal(t4.consistency_mask, [1, 1])
    np.testing.assert_array_equal(t4.policy[2], [0, 0, 0])
    # t = 5: last step.
    t5 = by_step[5]
    np.testing.assert_allclose(t5.value, [6, 0, 0])
    np.testing.assert_array_equal(t5.policy_mask, [1, 0, 0])
    np.testing.assert_array_equal(t5.consistency_mask, [1, 0])
    np.testing.assert_array_equal(t5.value_mask, [1, 1, 1])


def test_targets_near_a_truncated_end():
    by_step = _targets_by_step(_six_step_buffer(terminated=False))
    np.testing.assert_allclose(by_step[2].value, [3 + 2 + 0.25 * 104, 4 + 2.5 + 0.25 * 105,
                                                  5 + 3 + 0.25 * 106])
    t4 = by_step[4]
    np.testing.assert_allclose(t4.value[:2], [5 + 0.5 * 6 + 0.25 * 106, 6 + 0.5 * 106])
    np.testing.assert_array_equal(t4.value_mask, [1, 1, 0])
    np.testing.assert_array_equal(t4.policy_mask, [1, 1, 0])
    t5 = by_step[5]
    np.testing.assert_allclose(t5.value[0], 6 + 0.5 * 106)
    np.testing.assert_array_equal(t5.value_mask, [1, 0, 0])
    np.testing.assert_array_equal(t5.consistency_mask, [1, 0])


def _reference_targets(rewards, actions, policies, T, terminated, t, n, discount, K, L):
    """Straightforward per-step computation on the whole-episode arrays."""
    value, prefix = np.zeros(K + 1), np.zeros(K + 1)
    for k in range(K + 1):
        s = t + k
        z = sum(discount**i * rewards[s + i] for i in range(n) if s + i < T)
        end = s + n
        if not (terminated and end >= T):
            z += discount ** max(min(end, T) - s, 0) * (100 + min(end, T))
        value[k] = z
    acc = 0.0
    for k in range(1, K + 1):
        if (k - 1) % L == 0:
            acc = 0.0
        acc += rewards[t + k - 1] if t + k - 1 < T else 0.0
        prefix[k] = acc
    policy = np.array([policies[t + k] if t + k < T else np.zeros(policies.shape[1])
                       for k in range(K + 1)])
    real = np.array([t + k < T for k in range(K + 1)], dtype=np.float32)
    return dict(value=value, value_prefix=prefix, policy=policy, policy_mask=real,
                value_mask=np.ones(K + 1) if terminated else real,
                consistency_mask=np.array([t + k <= T for k in range(1, K + 1)], np.float32),
                actions=[actions[t + k] for k in range(K) if t + k < T])


@pytest.mark.parametrize("terminated", [True, False])
def test_targets_equal_one_array_reference_for_every_step(terminated):
    rng = np.random.default_rng(7)
    K, td, n_stack, H, L, T, A = 5, 5, 4, 7, 3, 40, 4
    obs = np.zeros((T + 1, 2), np.float32)
    obs[:, 0] = np.arange(T + 1)
    rewards = rng.normal(size=T).astype(np.float32)
    actions = rng.integers(0, A, size=T)
    policies = rng.dirichlet(np.ones(A), size=T).astype(np.float32)
    buffer = GameSegmentReplayBuffer(1000, history_length=H, stacked_observations=n_stack,
                                     num_unroll_steps=K, td_steps=td, seed=3)
    a = 0
    while a < T:
        b = min(T, a + int(rng.integers(1, 9)))
        buffer.add_episode_chunk("e", obs[a : b + 1], actions[a:b], rewards[a:b], policies[a:b],
                                 np.zeros(b - a), terminated=terminated and b == T,
                                 truncated=not terminated and b == T, collected_at=a)
        a = b
    windows = buffer.sample(len(buffer))
    n = off_policy_td_steps(40, windows.collected_at, td, 0.25, 40)  # n = 5 - (40 - a) // 10
    positions = bootstrap_positions(windows, n, K)
    boot = np.empty(positions.shape, np.float32)
    for k in range(K + 1):
        boot[:, k] = 100 + stack_frames(windows.frames, positions[:, k] + n_stack - 1, n_stack,
                                  per_row=True)[:, -2]
    targets = make_unroll_targets(windows, boot, n, 0.9, K, L)
    assert len(set(windows.steps.tolist())) == T
    for b, t in enumerate(windows.steps.tolist()):
        ref = _reference_targets(rewards, actions, policies, T, terminated, t, int(n[b]), 0.9,
                                 K, L)
        np.testing.assert_allclose(targets.value[b], ref["value"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(targets.value_prefix[b], ref["value_prefix"], atol=1e-5)
        np.testing.assert_array_equal(targets.policy[b], ref["policy"])
        for name in ("policy_mask", "value_mask", "consistency_mask"):
            np.testing.assert_array_equal(getattr(targets, name)[b], ref[name])
        real = len(ref["actions"])
        np.testing.assert_array_equal(targets.actions[b, :real], ref["actions"])
        assert np.all((targets.actions[b] >= 0) & (targets.actions[b] < A))
    assert targets.value.shape == (T, K + 1) and targets.policy.shape == (T, K + 1, A)
    assert targets.consistency_mask.shape == (T, K) and targets.actions.shape == (T, K)
    assert set(np.unique(n)) == {1, 2, 3, 4, 5}
    with pytest.raises(ValueError, match="num_unroll_steps"):
        make_unroll_targets(windows, boot, n, 0.9, K - 1, L)
