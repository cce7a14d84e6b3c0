"""GameSegmentReplayBuffer against a straightforward model: each episode as one plain array."""

from __future__ import annotations

import pickle
from dataclasses import dataclass

import numpy as np
import pytest

from rllib_barlowzero.env.frame_stacking import stack_frames
from rllib_barlowzero.replay_buffer import (
    GameSegmentReplayBuffer,
    SampledWindows,
    annealed_beta,
)

NUM_ACTIONS = 3


@dataclass
class Episode:
    """A whole synthetic episode; frames o_0..o_T, per-step arrays of length T."""

    episode_id: str
    obs: np.ndarray  # [T + 1, *F]
    actions: np.ndarray  # [T]
    rewards: np.ndarray  # [T]
    policies: np.ndarray  # [T, A]
    values: np.ndarray  # [T]
    collected_at: np.ndarray  # [T]
    terminated: bool
    truncated: bool

    @property
    def length(self) -> int:
        return len(self.actions)


def make_episode(rng: np.random.Generator, index: int, length: int, frame_shape: tuple,
                 terminated: bool, truncated: bool) -> Episode:
    if len(frame_shape) == 1:
        # Vector frames encode (episode, step) so that mismatches are easy to read.
        obs = rng.normal(size=(length + 1, *frame_shape)).astype(np.float32)
        obs[:, 0] = index
        obs[:, 1] = np.arange(length + 1)
    else:
        obs = rng.integers(0, 256, size=(length + 1, *frame_shape), dtype=np.uint8)
    policies = rng.random((length, NUM_ACTIONS)).astype(np.float32)
    policies /= policies.sum(axis=1, keepdims=True)
    return Episode(
        episode_id=f"ep{index}",
        obs=obs,
        actions=rng.integers(0, NUM_ACTIONS, size=length),
        rewards=rng.normal(size=length).astype(np.float32),
        policies=policies,
        values=rng.normal(size=length).astype(np.float32),
        collected_at=np.zeros(length, dtype=np.int64),  # filled per chunk below
        terminated=terminated,
        truncated=truncated,
    )


def chunks_of(ep: Episode, rng: np.random.Generator, max_chunk: int, send_steps: int | None = None,
              empty_final_chunk: bool = False) -> list[dict]:
    """Random-length chunks; the last one carries the end flags (unless send_steps cuts it)."""
    end = ep.length if send_steps is None else send_steps
    bounds = [0]
    while bounds[-1] < end:
        bounds.append(min(end, bounds[-1] + int(rng.integers(1, max_chunk + 1))))
    if end == 0:
        bounds = [0, 0]
    chunks = []
    for c, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        ep.collected_at[a:b] = 10 * c + a  # distinct per chunk
        chunks.append(dict(
            episode_id=ep.episode_id, observations=ep.obs[a : b + 1], actions=ep.actions[a:b],
            rewards=ep.rewards[a:b], mcts_policy=ep.policies[a:b], root_values=ep.values[a:b],
            terminated=False, truncated=False, collected_at=int(10 * c + a),
        ))
    finished = send_steps is None
    if finished and empty_final_chunk:
        chunks.append(dict(
            episode_id=ep.episode_id, observations=ep.obs[end : end + 1],
            actions=np.zeros(0, dtype=np.int64), rewards=np.zeros(0, np.float32),
            mcts_policy=np.zeros((0, NUM_ACTIONS), np.float32), root_values=np.zeros(0),
            terminated=False, truncated=False, collected_at=999,
        ))
    if finished:
        chunks[-1]["terminated"] = ep.terminated
        chunks[-1]["truncated"] = ep.truncated
    return chunks


def add_interleaved(buffer: GameSegmentReplayBuffer, all_chunks: list[list[dict]],
                    rng: np.random.Generator) -> None:
    queues = [list(c) for c in all_chunks]
    while any(queues):
        live = [i for i, q in enumerate(queues) if q]
        buffer.add_episode_chunk(**queues[live[int(rng.integers(len(live)))]].pop(0))


def reference_check(windows: SampledWindows, episodes: dict[str, Episode], sent: dict[str, int],
                    n: int, K: int, td: int) -> None:
    """Every sample equals slices of its episode's plain arrays."""
    for b in range(windows.batch_size):
        ep = episodes[windows.episode_ids[b]]
        t = int(windows.steps[b])
        ended = sent[ep.episode_id] == ep.length and (ep.terminated or ep.truncated)
        T = ep.length
        if not ended:
            assert t + K + td <= sent[ep.episode_id], "uncommitted data was sampled"
        expected_left = min(T - t, K + td + 1) if ended else K + td + 1
        assert windows.steps_left[b] == expected_left
        assert windows.terminated[b] == (ended and ep.terminated and T - t <= K + td)
        frame_idx = np.clip(np.arange(t - n + 1, t + K + td + 1), 0, T)
        np.testing.assert_array_equal(windows.frames[b], ep.obs[frame_idx])
        for i in range(K + td):
            if i < expected_left:
                assert windows.actions[b, i] == ep.actions[t + i]
                assert windows.rewards[b, i] == ep.rewards[t + i]
            else:
                assert 0 <= windows.actions[b, i] < NUM_ACTIONS
                assert windows.rewards[b, i] == 0.0
        for i in range(K + td + 1):
            expected = ep.values[t + i] if i < expected_left else 0.0
            assert windows.root_values[b, i] == expected
        for k in range(K + 1):
            expected = ep.policies[t + k] if k < expected_left else np.zeros(NUM_ACTIONS)
            np.testing.assert_array_equal(windows.policies[b, k], expected)
        assert windows.collected_at[b] == ep.collected_at[t]


def expected_sampleable(episodes: dict[str, Episode], sent: dict[str, int], H: int,
                        pad: int) -> set[tuple[str, int]]:
    out = set()
    for eid, ep in episodes.items():
        if sent[eid] == ep.length and (ep.terminated or ep.truncated):
            out |= {(eid, t) for t in range(ep.length)}
        else:
            committed = max(0, (sent[eid] - pad) // H) * H
            out |= {(eid, t) for t in range(committed)}
    return out


@pytest.mark.parametrize("frame_shape", [(4,), (2, 3, 3)])
def test_sample_matches_plain_episode_arrays(frame_shape):
    rng = np.random.default_rng(0)
    n, K, td, H = 3, 3, 4, 7
    buffer = GameSegmentReplayBuffer(capacity=10_000, history_length=H, stacked_observations=n,
                                     num_unroll_steps=K, td_steps=td, seed=1)
    kinds = [(23, True, False), (30, False, True), (5, True, False), (1, False, True),
             (40, False, False), (17, False, False), (14, True, False), (3, False, False)]
    episodes, sent, all_chunks = {}, {}, []
    for i, (length, term, trunc) in enumerate(kinds):
        ep = make_episode(rng, i, length, frame_shape, term, trunc)
        episodes[ep.episode_id] = ep
        running = not (term or trunc)
        send = int(rng.integers(length // 2, length + 1)) if running else None
        sent[ep.episode_id] = length if send is None else send
        all_chunks.append(chunks_of(ep, rng, max_chunk=9, send_steps=send,
                                    empty_final_chunk=(i == 0)))
    add_interleaved(buffer, all_chunks, rng)

    expected = expected_sampleable(episodes, sent, H, K + td)
    num = len(expected)
    assert len(buffer) == buffer.num_steps() == num
    for _ in range(3):
        # Without replacement, a batch of every step is a permutation of the committed steps.
        windows = buffer.sample(num)
        assert windows.frames.shape == (num, n + K + td, *frame_shape)
        assert windows.actions.shape == (num, K + td) and windows.rewards.shape == (num, K + td)
        assert windows.root_values.shape == (num, K + td + 1)
        assert windows.policies.shape == (num, K + 1, NUM_ACTIONS)
        assert (windows.stacked_observations, windows.num_unroll_steps,
                windows.td_steps) == (n, K, td)
        np.testing.assert_array_equal(windows.weights, 1.0)
        reference_check(windows, episodes, sent, n, K, td)
        # every committed step is reachable, nothing else
        assert set(zip(windows.episode_ids, windows.steps.tolist(), strict=True)) == expected
        assert len(set(windows.indices.tolist())) == num


def window_stack(frames: np.ndarray, j, n: int) -> np.ndarray:
    """The stacked observation of window position j (step t+j of each sample)."""
    return stack_frames(frames, np.asarray(j) + n - 1, n, per_row=True)


def test_window_stacks_repeat_first_frame_and_match_reference():
    rng = np.random.default_rng(1)
    n, K, td = 4, 2, 3
    ep = make_episode(rng, 0, 9, (2, 3, 3), terminated=True, truncated=False)
    buffer = GameSegmentReplayBuffer(100, history_length=5, stacked_observations=n,
                                     num_unroll_steps=K, td_steps=td, seed=0)
    for chunk in chunks_of(ep, rng, max_chunk=4):
        buffer.add_episode_chunk(**chunk)
    windows = buffer.sample(9)
    for b in range(windows.batch_size):
        t = int(windows.steps[b])
        for j in range(K + td + 1):
            want = np.concatenate([ep.obs[min(max(t + j + m, 0), ep.length)]
                                   for m in range(-n + 1, 1)], axis=0)
            np.testing.assert_array_equal(window_stack(windows.frames, j, n)[b], want)
    stacked = window_stack(windows.frames, 0, n)
    assert stacked.shape == (9, n * 2, 3, 3)
    per_sample = window_stack(windows.frames, np.arange(9) % 3, n)
    np.testing.assert_array_equal(per_sample[1], window_stack(windows.frames, 1, n)[1])
    vec = np.arange(2 * 6 * 3).reshape(2, 6, 3)
    assert window_stack(vec, 2, 4).shape == (2, 12)
    np.testing.assert_array_equal(window_stack(vec, 2, 4)[0], vec[0, 2:6].reshape(-1))


def test_commit_rule_for_episode_in_progress():
    rng = np.random.default_rng(2)
    K, td, H = 2, 3, 4
    buffer = GameSegmentReplayBuffer(1000, history_length=H, stacked_observations=2,
                                     num_unroll_steps=K, td_steps=td)
    ep = make_episode(rng, 0, 30, (3,), terminated=False, truncated=True)
    chunks = chunks_of(ep, rng, max_chunk=1)  # one step per chunk
    for cur, chunk in enumerate(chunks, start=1):
        committed = buffer.add_episode_chunk(**chunk)
        if cur < 30:
            want = max(0, (cur - K - td) // H) * H
            assert buffer.num_steps() == want
            assert buffer.num_pending_steps() == cur - want
            assert committed == (H if cur >= K + td + H and (cur - K - td) % H == 0 else 0)
    assert buffer.num_steps() == 30 and buffer.num_pending_steps() == 0
    assert buffer.num_segments() == 8  # 7 full segments of 4 + one of 2


def test_close_episode_commits_tail_as_truncated():
    rng = np.random.default_rng(3)
    buffer = GameSegmentReplayBuffer(1000, history_length=4, stacked_observations=2,
                                     num_unroll_steps=2, td_steps=2)
    ep = make_episode(rng, 0, 10, (3,), terminated=False, truncated=False)
    for chunk in chunks_of(ep, rng, max_chunk=3):
        buffer.add_episode_chunk(**chunk)
    assert buffer.num_steps() == 4
    assert buffer.close_episode("ep0") == 6
    assert buffer.close_episode("unknown") == 0
    assert buffer.num_steps() == 10 and buffer.stats()["num_episodes_in_progress"] == 0
    windows = buffer.sample(10)
    ep.truncated = True
    reference_check(windows, {"ep0": ep}, {"ep0": 10}, 2, 2, 2)
    assert not windows.terminated.any()


def test_fifo_eviction_at_capacity():
    rng = np.random.default_rng(4)
    H = 5
    buffer = GameSegmentReplayBuffer(capacity=22, history_length=H, stacked_observations=2,
                                     num_unroll_steps=1, td_steps=1, seed=0)
    episodes = [make_episode(rng, i, 10, (3,), terminated=True, truncated=False)
                for i in range(4)]
    for chunk in chunks_of(episodes[0], rng, max_chunk=10):
        buffer.add_episode_chunk(**chunk)
    old = buffer.sample(10)
    assert buffer.num_steps() == 10
    for ep in episodes[1:]:
        for chunk in chunks_of(ep, rng, max_chunk=10):
            buffer.add_episode_chunk(**chunk)
    # 40 steps added in segments of 5: the oldest go first until <= 22 remain.
    assert buffer.num_steps() == 20 and buffer.num_segments() == 4
    windows = buffer.sample(20)
    assert set(windows.episode_ids) == {"ep2", "ep3"}
    # Stale indices (evicted since sampling) are ignored; live ones are updated.
    buffer.update_priorities(old.indices, np.full(10, 7.0))
    assert buffer.stats()["priority_max"] == 1.0
    buffer.update_priorities(np.concatenate([old.indices, windows.indices[:1]]),
                             np.concatenate([np.full(10, 7.0), [3.0]]))
    assert buffer.stats()["priority_max"] == pytest.approx(3.0 + 1e-6)
    # The newest segment is kept even if it alone exceeds the capacity.
    small = GameSegmentReplayBuffer(capacity=3, history_length=H, stacked_observations=2,
                                    num_unroll_steps=1, td_steps=1)
    for chunk in chunks_of(episodes[0], rng, max_chunk=10):
        small.add_episode_chunk(**chunk)
    assert small.num_steps() == 5 and small.num_segments() == 1


def test_memory_per_step_close_to_one_frame():
    n, K, td, H = 4, 5, 5, 400
    buffer = GameSegmentReplayBuffer(capacity=10_000, history_length=H, stacked_observations=n,
                                     num_unroll_steps=K, td_steps=td)
    frame = (3, 96, 96)
    length = 1200
    obs = np.zeros((length + 1, *frame), dtype=np.uint8)
    policy = np.full((length, 4), 0.25, np.float32)
    for a in range(0, length, 100):
        b = a + 100
        buffer.add_episode_chunk("e", obs[a : b + 1], np.zeros(100, np.int64),
                                 np.zeros(100, np.float32), policy[a:b], np.zeros(100, np.float32),
                                 terminated=b == length, truncated=False, collected_at=0)
    assert buffer.num_steps() == length and buffer.num_segments() == 3
    frame_bytes = 3 * 96 * 96
    assert buffer.frame_bytes() == frame_bytes
    ratio = buffer.bytes_per_step() / frame_bytes
    assert 1.0 < ratio < 1.1, ratio
    stats = buffer.stats()
    assert stats["frames_per_step"] == pytest.approx(ratio)
    assert stats["memory_bytes"] == buffer.memory_bytes() >= buffer.memory_bytes(False)
    assert stats["num_steps"] == length and stats["num_segments"] == 3


def _buffer_with_steps(alpha: float, beta: float, num_steps: int = 40, seed: int = 0,
                       eps: float = 1e-6, history_length: int = 8):
    rng = np.random.default_rng(seed)
    buffer = GameSegmentReplayBuffer(1000, history_length=history_length, stacked_observations=2,
                                     num_unroll_steps=1, td_steps=1, priority_prob_alpha=alpha,
                                     priority_prob_beta=beta, prioritized_replay_eps=eps,
                                     seed=seed)
    ep = make_episode(rng, 0, num_steps, (2,), terminated=True, truncated=False)
    for chunk in chunks_of(ep, rng, max_chunk=7):
        buffer.add_episode_chunk(**chunk)
    return buffer


def _set_priorities_by_step(buffer: GameSegmentReplayBuffer, fn) -> np.ndarray:
    """Sets priority fn(step) for every step of a one-episode buffer; returns them by step.

    Indices are opaque, so a batch of every step (a permutation, no replacement) finds them.
    """
    windows = buffer.sample(buffer.num_steps())
    assert sorted(windows.steps.tolist()) == list(range(buffer.num_steps()))
    buffer.update_priorities(windows.indices, fn(windows.steps))
    return fn(np.arange(buffer.num_steps())) + buffer.prioritized_replay_eps


def _set_priorities_by_key(buffer: GameSegmentReplayBuffer, prios: dict) -> None:
    """Sets the priority of every live step to prios[(episode_id, step)]."""
    windows = buffer.sample(buffer.num_steps())
    keys = list(zip(windows.episode_ids, windows.steps.tolist(), strict=True))
    buffer.update_priorities(windows.indices, np.array([prios[k] for k in keys]))


def _chi2(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = counts.sum() * probs
    return float(((counts - expected) ** 2 / expected).sum())


def test_first_draw_of_a_batch_follows_priorities_to_the_alpha():
    alpha = 0.6
    buffer = _buffer_with_steps(alpha=alpha, beta=0.4)
    prios = _set_priorities_by_step(buffer, lambda s: 0.2 + (s % 5).astype(np.float64) ** 2)
    num_draws = 10_000
    rng = np.random.default_rng(123)
    first = np.array([buffer.sample(1, rng).steps[0] for _ in range(num_draws)])
    counts = np.bincount(first, minlength=len(prios))
    probs = prios**alpha / (prios**alpha).sum()
    # 39 degrees of freedom: the 99.9% quantile is about 72.
    assert _chi2(counts, probs) < 72
    # The test tells alpha apart: the same counts reject P proportional to p (alpha = 1).
    assert _chi2(counts, prios / prios.sum()) > 500


def test_batch_draws_are_sequential_without_replacement():
    """Second step of a batch of 2: P(j) = sum_{i != j} P(i) P(j) / (1 - P(i)) (EfficientZero's
    np.random.choice(replace=False, p=P), i.e. successive draws among the steps left)."""
    alpha = 0.6
    buffer = _buffer_with_steps(alpha=alpha, beta=0.4, num_steps=12)
    prios = _set_priorities_by_step(buffer, lambda s: 0.5 + (s % 4).astype(np.float64) ** 3)
    probs = prios**alpha / (prios**alpha).sum()
    second_probs = np.array([sum(probs[i] * probs[j] / (1 - probs[i])
                                 for i in range(len(probs)) if i != j)
                             for j in range(len(probs))])
    assert second_probs.sum() == pytest.approx(1.0)
    num_draws = 10_000
    rng = np.random.default_rng(7)
    pairs = np.array([buffer.sample(2, rng).steps for _ in range(num_draws)])
    assert (pairs[:, 0] != pairs[:, 1]).all()
    # 11 degrees of freedom: the 99.9% quantile is about 31.3.
    assert _chi2(np.bincount(pairs[:, 0], minlength=12), probs) < 31.3
    assert _chi2(np.bincount(pairs[:, 1], minlength=12), second_probs) < 31.3


@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_batches_have_no_duplicate_steps(alpha):
    buffer = _buffer_with_steps(alpha=alpha, beta=0.4)
    # A dominant outlier (P about 0.87 for alpha 0.6): drawn with replacement, it would repeat
    # in most batches.
    _set_priorities_by_step(buffer, lambda s: np.where(s == 7, 1e4, 1.0))
    rng = np.random.default_rng(0)
    outlier_drawn = 0
    for _ in range(400):
        size = int(rng.integers(2, 41))
        windows = buffer.sample(size)
        assert len(set(windows.indices.tolist())) == size
        assert len(set(windows.steps.tolist())) == size
        assert np.all(np.isfinite(windows.weights)) and windows.weights.max() == 1.0
        outlier_drawn += int(7 in windows.steps)
    if alpha > 0:
        assert outlier_drawn > 300
    np.testing.assert_array_equal(np.sort(buffer.sample(40).steps), np.arange(40))


def test_importance_weights_by_hand_for_a_given_beta():
    # Priorities 1, 4, 9, 16 (eps = 0) and alpha = 0.5: p^alpha = 1, 2, 3, 4, P = i / 10,
    # N P = 0.4, 0.8, 1.2, 1.6, so w_i / w_max = (P_i / P_min)^-beta = ((i + 1) / (m + 1))^-beta
    # with m the lowest step of the batch.
    buffer = _buffer_with_steps(alpha=0.5, beta=0.4, num_steps=4, eps=0.0, history_length=4)
    _set_priorities_by_step(buffer, lambda s: (s + 1.0) ** 2)
    for beta, want in ((0.5, [1.0, 0.5**0.5, 3**-0.5, 0.5]), (1.0, [1.0, 1 / 2, 1 / 3, 1 / 4]),
                       (0.0, [1.0, 1.0, 1.0, 1.0]), (None, [1.0, 2**-0.4, 3**-0.4, 4**-0.4])):
        windows = buffer.sample(4, beta=beta)
        assert windows.weights.dtype == np.float32
        np.testing.assert_allclose(windows.weights, np.array(want)[windows.steps], rtol=1e-6)
    # Unnormalised: (N P)^-beta = 0.4^-0.5, 0.8^-0.5, ...; normalised by the batch's max.
    for _ in range(50):
        windows = buffer.sample(2, beta=0.5)
        raw = np.array([0.4, 0.8, 1.2, 1.6])[windows.steps] ** -0.5
        np.testing.assert_allclose(windows.weights, raw / raw.max(), rtol=1e-6)


def test_importance_weights_formula():
    alpha, beta = 0.7, 0.4
    buffer = _buffer_with_steps(alpha=alpha, beta=beta)
    prios = _set_priorities_by_step(buffer, lambda s: 0.5 + (s % 3).astype(np.float64))
    probs = prios**alpha / (prios**alpha).sum()
    for call_beta in (None, 0.9):
        windows = buffer.sample(16, beta=call_beta)
        w = (len(prios) * probs[windows.steps]) ** -(beta if call_beta is None else call_beta)
        np.testing.assert_allclose(windows.weights, w / w.max(), rtol=1e-5)
        assert windows.weights.dtype == np.float32
        assert windows.weights.max() == pytest.approx(1.0)
    stats = buffer.stats()
    assert stats["priority_max"] == pytest.approx(2.5 + 1e-6)
    assert stats["priority_min"] == pytest.approx(0.5 + 1e-6)
    assert stats["priority_mean"] == pytest.approx(prios.mean())


def test_annealed_beta():
    assert annealed_beta(0.4, 0, 1000) == pytest.approx(0.4)
    assert annealed_beta(0.4, 500, 1000) == pytest.approx(0.7)
    assert annealed_beta(0.4, 1000, 1000) == pytest.approx(1.0)
    assert annealed_beta(0.4, 250, 1000) == pytest.approx(0.55)
    assert annealed_beta(0.0, 300, 1200) == pytest.approx(0.25)
    assert annealed_beta(0.4, 5000, 1000) == 1.0  # clipped
    assert annealed_beta(0.4, -10, 1000) == pytest.approx(0.4)  # clipped
    assert annealed_beta(1.0, 3, 10) == 1.0
    assert isinstance(annealed_beta(0.4, 1, 10), float)
    with pytest.raises(ValueError, match="beta0"):
        annealed_beta(1.5, 0, 10)
    with pytest.raises(ValueError, match="training_steps"):
        annealed_beta(0.4, 0, 0)


def test_new_steps_get_max_priority_and_alpha_zero_is_uniform():
    buffer = _buffer_with_steps(alpha=0.0, beta=0.4)
    _set_priorities_by_step(buffer, lambda s: s.astype(np.float64))
    windows = buffer.sample(32)
    np.testing.assert_array_equal(windows.weights, 1.0)
    rng = np.random.default_rng(9)
    ep = make_episode(rng, 1, 8, (2,), terminated=True, truncated=False)
    for chunk in chunks_of(ep, rng, max_chunk=8):
        buffer.add_episode_chunk(**chunk)
    prios = buffer.get_state()["priorities"]
    np.testing.assert_allclose(prios[-8:], 39.0 + 1e-6)
    # Uniform without replacement: every step is in a batch of 12 of 48 with probability 1/4.
    counts = np.zeros(48, dtype=np.int64)
    for _ in range(4000):
        windows = buffer.sample(12)
        counts[windows.steps + 40 * (np.array(windows.episode_ids) == "ep1")] += 1
    assert counts.sum() == 48_000 and counts.min() > 900 and counts.max() < 1100


def _five_step_episode(buffer: GameSegmentReplayBuffer, index: int) -> None:
    rng = np.random.default_rng(100 + index)
    ep = make_episode(rng, index, 5, (2,), terminated=True, truncated=False)
    for chunk in chunks_of(ep, rng, max_chunk=5):
        buffer.add_episode_chunk(**chunk)


def test_new_steps_get_max_of_live_priorities_not_of_evicted_ones():
    eps = 1e-6
    buffer = GameSegmentReplayBuffer(capacity=10, history_length=5, stacked_observations=2,
                                     num_unroll_steps=1, td_steps=1, priority_prob_alpha=0.6,
                                     prioritized_replay_eps=eps, seed=0)
    _five_step_episode(buffer, 0)
    _five_step_episode(buffer, 1)
    assert buffer.num_steps() == 10
    np.testing.assert_array_equal(buffer.get_state()["priorities"], 1.0)  # empty buffer: 1.0
    prios = {("ep0", t): 1.0 for t in range(5)}
    prios[("ep0", 2)] = 100.0  # the outlier
    prios.update({("ep1", t): p for t, p in enumerate([0.5, 1.0, 1.5, 2.0, 3.0])})
    _set_priorities_by_key(buffer, prios)
    assert buffer.stats()["priority_max"] == pytest.approx(100.0 + eps)

    _five_step_episode(buffer, 2)  # 15 steps > 10: ep0 (with the outlier) is evicted
    assert buffer.num_segments() == 2
    assert set(buffer.sample(10).episode_ids) == {"ep1", "ep2"}
    new = buffer.get_state()["priorities"][-5:]
    np.testing.assert_array_equal(new, 3.0 + eps)  # max of ep1's, not the all-time 100
    assert buffer.stats()["priority_max"] == pytest.approx(3.0 + eps)

    prios.update({("ep2", t): p for t, p in enumerate([0.1, 0.2, 0.3, 0.4, 0.25])})
    _set_priorities_by_key(buffer, prios)
    _five_step_episode(buffer, 3)  # evicts ep1: the max left is ep2's 0.4
    np.testing.assert_array_equal(buffer.get_state()["priorities"][-5:], 0.4 + eps)

    # A commit that evicts every older step leaves no live priority: back to 1.0.
    small = GameSegmentReplayBuffer(capacity=5, history_length=5, stacked_observations=2,
                                    num_unroll_steps=1, td_steps=1, priority_prob_alpha=0.6)
    _five_step_episode(small, 0)
    _set_priorities_by_key(small, {("ep0", t): 50.0 for t in range(5)})
    _five_step_episode(small, 1)
    assert small.num_steps() == 5
    np.testing.assert_array_equal(small.get_state()["priorities"], 1.0)


def test_batch_larger_than_buffer_and_bad_beta_raise():
    for alpha in (0.0, 0.6):
        buffer = _buffer_with_steps(alpha=alpha, beta=0.4)
        assert buffer.sample(40).batch_size == 40
        with pytest.raises(ValueError, match="batch_size 41 is larger than the 40 sampleable"):
            buffer.sample(41)
        for beta in (-0.1, 1.5, float("nan")):
            with pytest.raises(ValueError, match="beta"):
                buffer.sample(4, beta=beta)
    # eps = 0: steps of priority 0 are never drawn, so they do not count for the batch size.
    buffer = _buffer_with_steps(alpha=0.6, beta=0.4, eps=0.0)
    every_step = buffer.sample(40)
    buffer.update_priorities(every_step.indices, np.where(every_step.steps < 3, 1.0, 0.0))
    np.testing.assert_array_equal(np.sort(buffer.sample(3).steps), [0, 1, 2])
    with pytest.raises(ValueError, match="3 steps with a non-zero priority"):
        buffer.sample(4)
    buffer.update_priorities(every_step.indices, np.zeros(40))  # all 0: uniform
    windows = buffer.sample(40)
    np.testing.assert_array_equal(np.sort(windows.steps), np.arange(40))
    np.testing.assert_array_equal(windows.weights, 1.0)


def test_update_priorities_validates():
    buffer = _buffer_with_steps(alpha=1.0, beta=0.4)
    windows = buffer.sample(4)
    with pytest.raises(ValueError, match="priorities"):
        buffer.update_priorities(windows.indices, np.ones(3))
    with pytest.raises(ValueError, match="priorities"):
        buffer.update_priorities(windows.indices, np.array([1.0, np.nan, 1.0, 1.0]))


_FIELDS = ("frames", "actions", "rewards", "root_values", "policies", "steps_left", "terminated",
           "collected_at", "weights", "indices", "steps")


def _assert_same_windows(a: SampledWindows, b: SampledWindows) -> None:
    for field in _FIELDS:
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    assert a.episode_ids == b.episode_ids


@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_same_seed_same_draws(alpha):
    a = _buffer_with_steps(alpha=alpha, beta=0.4, seed=4)
    b = _buffer_with_steps(alpha=alpha, beta=0.4, seed=4)
    for size in (1, 7, 40, 16):
        _assert_same_windows(a.sample(size, beta=0.7), b.sample(size, beta=0.7))
    c = _buffer_with_steps(alpha=alpha, beta=0.4, seed=5)
    assert not np.array_equal(a.sample(16).indices, c.sample(16).indices)


def test_get_state_set_state_round_trip_samples_identically():
    rng = np.random.default_rng(5)
    kwargs = dict(capacity=60, history_length=6, stacked_observations=3, num_unroll_steps=2,
                  td_steps=3, priority_prob_alpha=0.6, priority_prob_beta=0.4, seed=11)
    buffer = GameSegmentReplayBuffer(**kwargs)
    episodes = [make_episode(rng, i, 25, (2, 2, 2), terminated=i % 2 == 0, truncated=i % 2 == 1)
                for i in range(4)]
    all_chunks = [chunks_of(ep, rng, max_chunk=6) for ep in episodes]
    # Hold back the end of the last episode so that a builder is in progress.
    held_back = all_chunks[-1][-2:]
    all_chunks[-1] = all_chunks[-1][:-2]
    add_interleaved(buffer, all_chunks, rng)
    windows = buffer.sample(32)
    buffer.update_priorities(windows.indices, rng.random(32) * 3)
    assert buffer.stats()["num_episodes_in_progress"] == 1

    state = buffer.get_state()
    assert state["version"] == 2 and "max_priority" not in state
    restored = GameSegmentReplayBuffer(**{**kwargs, "seed": 0})
    restored.set_state(pickle.loads(pickle.dumps(state)))
    # A version-1 state (it also held the all-time max priority) loads the same way.
    from_v1 = GameSegmentReplayBuffer(**{**kwargs, "seed": 0})
    from_v1.set_state(pickle.loads(pickle.dumps({**state, "version": 1, "max_priority": 1e6})))
    assert restored.stats() == buffer.stats() == from_v1.stats()
    for beta in (None, 0.8, 1.0):
        a, b, c = (buf.sample(32, beta=beta) for buf in (buffer, restored, from_v1))
        _assert_same_windows(a, b)
        _assert_same_windows(a, c)
    for chunk in held_back:  # the restored builder continues the episode
        for buf in (buffer, restored, from_v1):
            buf.add_episode_chunk(**chunk)
    live_max = max(buffer.get_state()["priorities"][:-5])
    assert buffer.get_state()["priorities"][-1] == live_max < 1e6
    np.testing.assert_array_equal(from_v1.get_state()["priorities"],
                                  buffer.get_state()["priorities"])
    assert len(buffer) >= 48
    a, b, c = (buf.sample(48) for buf in (buffer, restored, from_v1))
    _assert_same_windows(a, b)
    _assert_same_windows(a, c)

    other = GameSegmentReplayBuffer(**{**kwargs, "td_steps": 4})
    with pytest.raises(ValueError, match="td_steps"):
        other.set_state(buffer.get_state())
    with pytest.raises(ValueError, match="unknown version 3"):
        restored.set_state({**buffer.get_state(), "version": 3})


def _chunk(L=3, frame=(2, 4, 4), A=NUM_ACTIONS, **overrides):
    chunk = dict(episode_id="e", observations=np.zeros((L + 1, *frame), np.uint8),
                 actions=np.zeros(L, np.int64), rewards=np.zeros(L, np.float32),
                 mcts_policy=np.full((L, A), 1.0 / A, np.float32), root_values=np.zeros(L),
                 terminated=False, truncated=False, collected_at=0)
    chunk.update(overrides)
    return chunk


@pytest.mark.parametrize("overrides, match", [
    (dict(rewards=np.zeros(2)), r"rewards: expected shape \[3\]"),
    (dict(actions=np.zeros(4, np.int64)), r"observations: expected shape \[5, 2, 4, 4\]"),
    (dict(observations=np.zeros((4, 2, 4, 5), np.uint8)), r"observations: expected frames of "
                                                           r"shape \(2, 4, 4\)"),
    (dict(rewards=np.array([0.0, np.inf, 0.0])), r"rewards: expected finite"),
    (dict(mcts_policy=np.zeros((3, 2))), r"mcts_policy: expected shape \[3, 3\]"),
    (dict(root_values=np.zeros((3, 1))), r"root_values: expected shape \[3\]"),
    (dict(actions=np.array([0, 3, 1])), r"actions: expected values in \[0, 3\)"),
    (dict(actions=np.array([0.0, 1.0, 1.0])), r"actions: expected an integer array"),
    (dict(observations=np.zeros((4, 2, 4, 4), np.float32)), r"observations: expected dtype"),
])
def test_input_validation(overrides, match):
    buffer = GameSegmentReplayBuffer(100, history_length=4, stacked_observations=2,
                                     num_unroll_steps=1, td_steps=1)
    buffer.add_episode_chunk(**_chunk(episode_id="first"))
    with pytest.raises(ValueError, match=match):
        buffer.add_episode_chunk(**_chunk(**overrides))
    assert buffer.num_pending_steps() == 3  # the bad chunk changed nothing


def test_continuing_chunk_must_start_with_previous_last_frame():
    buffer = GameSegmentReplayBuffer(100, history_length=4, stacked_observations=2,
                                     num_unroll_steps=1, td_steps=1)
    buffer.add_episode_chunk(**_chunk())
    with pytest.raises(ValueError, match="observations\\[0\\]"):
        buffer.add_episode_chunk(**_chunk(observations=np.ones((4, 2, 4, 4), np.uint8)))


def test_sample_empty_buffer_and_constructor_checks():
    buffer = GameSegmentReplayBuffer(100, history_length=4, stacked_observations=2,
                                     num_unroll_steps=1, td_steps=1)
    assert buffer.stats()["num_steps"] == 0 and buffer.bytes_per_step() == 0.0
    with pytest.raises(ValueError, match="no sampleable steps"):
        buffer.sample(4)
    with pytest.raises(ValueError, match="history_length"):
        GameSegmentReplayBuffer(100, history_length=0, stacked_observations=2,
                                num_unroll_steps=1, td_steps=1)
    with pytest.raises(ValueError, match="priority_prob_alpha"):
        GameSegmentReplayBuffer(100, history_length=4, stacked_observations=2,
                                num_unroll_steps=1, td_steps=1, priority_prob_alpha=-1)
    with pytest.raises(ValueError, match="priority_prob_beta"):
        GameSegmentReplayBuffer(100, history_length=4, stacked_observations=2,
                                num_unroll_steps=1, td_steps=1, priority_prob_beta=1.5)


def test_sampling_with_external_rng_is_reproducible():
    buffer = _buffer_with_steps(alpha=0.5, beta=0.4)
    a = buffer.sample(16, np.random.default_rng(3))
    b = buffer.sample(16, np.random.default_rng(3))
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.actions, b.actions)
