"""Game-segment replay buffer for BarlowZero (EfficientZero-style), pure numpy.

Episodes arrive in chunks (RLlib env runners return pieces of ongoing episodes) and are cut into
*game segments* of ``history_length`` steps. A segment is self-contained: besides its own steps it
holds

* the ``n - 1`` frames before its start (``n = stacked_observations``), so that the stacked
  observation of its first step can be built; before the episode start these repeat the
  episode's first frame o_0 (EfficientZero's convention), and
* a *padding* of the following ``K + td`` steps (``K = num_unroll_steps``, ``td = td_steps``):
  their frames, actions, rewards, search policies and root values, copied from the next part of
  the episode (or what exists up to the final frame o_T if the episode ends earlier),

so a training window that starts at any of its steps never needs another segment. Frames are
stored once per step plus this small overlap: ``n - 1 + K + td + 1`` extra frames per segment
(15 frames per 400 steps with the paper's settings, i.e. about 1.04 frames per step).

Commit rule. A segment becomes sampleable ("committed") as soon as the episode has gone
``K + td`` steps past its end (its padding is full), or when the episode ends (terminated or
truncated), in which case its padding stops at o_T. Until then its data lives in a per-episode
*builder*: **the unfinished tail of an episode in progress (up to ``history_length + K + td``
steps) is not sampleable yet**. ``close_episode`` commits such a tail by hand (as a truncated
end), e.g. for episodes that will never be continued.

Priorities (as EfficientZero's ``core/replay_buffer.py``). Every sampleable step has a priority;
new steps get the largest priority among the steps still in the buffer after the commit's
eviction (1.0 when none remain), so an evicted outlier no longer inflates new data. A batch of B
distinct steps is drawn *without replacement* (sequentially, each draw with probability
P(i) = p_i^alpha / sum_j p_j^alpha over the steps not drawn yet; ``alpha = 0``: uniform) and
weighted by w_i = (N P(i))^-beta / max_batch (N P(j))^-beta, with beta given per call (the
algorithm anneals it to 1, see ``annealed_beta``).
Each committed step gets a unique, ever increasing integer id; ids of the live steps form one
contiguous range (segments are evicted oldest first), so the priorities are one flat array and an
id returned by ``sample`` stays valid until its segment is evicted (later updates to it are
ignored).

Capacity is counted in sampleable steps; when a commit brings the total above it, whole segments
are evicted oldest first (the newest segment is always kept, even if it alone exceeds capacity).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["GameSegmentReplayBuffer", "SampledWindows", "annealed_beta"]

# 2: no "max_priority" (new steps get the max of the live priorities). Version 1 states load.
_STATE_VERSION = 2
_LOADABLE_STATE_VERSIONS = (1, 2)
_INITIAL_PRIORITY = 1.0  # priority of new steps when the buffer holds no other step


@dataclass
class SampledWindows:
    """A batch of B training windows, one per sampled step t of some episode.

    With n = stacked_observations, K = num_unroll_steps, td = td_steps and T the index of the
    episode's final frame (T actions in the episode):

    Attributes:
        frames: [B, n - 1 + K + td + 1, *frame_shape] raw frames o_{t-n+1} .. o_{t+K+td}, oldest
            first. Before the episode start they repeat o_0; beyond o_T they repeat o_T.
            The stacked observation of step t+j is
            ``stack_frames(frames, j + n - 1, n, per_row=True)``
            (j = 0 .. K + td), i.e. ``frames[:, j : j + n]`` concatenated along axis 0 of a frame.
        actions: int64 [B, K + td], a_t .. a_{t+K+td-1}; beyond the episode end uniform random
            valid actions drawn from the sampler's rng.
        rewards: float32 [B, K + td], r_t .. r_{t+K+td-1}; 0 beyond the end.
        root_values: float32 [B, K + td + 1], search values v_t .. v_{t+K+td}; 0 at and beyond
            the end (there is no search at o_T).
        policies: float32 [B, K + 1, A], search visit distributions pi_t .. pi_{t+K}; zeros at
            and beyond the end.
        steps_left: int64 [B], T - t when the episode's end lies inside the window
            (T - t <= K + td), otherwise K + td + 1 (the episode goes on past the window, or its
            end is not known yet). Position i of the window (step t+i) is a real step with an
            action iff i < steps_left; the frame o_{t+i} exists iff i <= steps_left.
        terminated: bool [B], the episode ended by termination inside the window (the value
            after the end is 0). False for a truncated end or an episode that goes on.
        collected_at: int64 [B], training-step counter of the model that played step t.
        weights: float32 [B], importance-sampling weights (N P(i))^-beta normalised by their
            max in the batch (all 1 for alpha = 0).
        indices: int64 [B], opaque handles of the sampled steps for ``update_priorities``.
        episode_ids: tuple of B str, the episode of each sample (informational).
        steps: int64 [B], t, the step index inside its episode (informational).
    """

    frames: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    root_values: np.ndarray
    policies: np.ndarray
    steps_left: np.ndarray
    terminated: np.ndarray
    collected_at: np.ndarray
    weights: np.ndarray
    indices: np.ndarray
    episode_ids: tuple[str, ...]
    steps: np.ndarray

    @property
    def batch_size(self) -> int:
        """B."""
        return int(self.actions.shape[0])

    @property
    def num_unroll_steps(self) -> int:
        """K (from the policies' shape)."""
        return int(self.policies.shape[1] - 1)

    @property
    def td_steps(self) -> int:
        """td (from the actions' shape)."""
        return int(self.actions.shape[1] - self.num_unroll_steps)

    @property
    def stacked_observations(self) -> int:
        """n (from the frames' shape)."""
        return int(self.frames.shape[1] - self.actions.shape[1])


def annealed_beta(beta0: float, step: int, training_steps: int) -> float:
    """Importance-sampling exponent annealed linearly from ``beta0`` to 1 (EfficientZero).

    ``beta = beta0 + (1 - beta0) * step / training_steps``, clipped to ``[beta0, 1]`` (so a step
    before 0 gives beta0 and any step past ``training_steps`` gives 1).

    Args:
        beta0: initial exponent (``priority_prob_beta``), in [0, 1].
        step: number of training steps done so far.
        training_steps: step at which beta reaches 1, >= 1.

    Returns:
        The exponent to pass as ``GameSegmentReplayBuffer.sample(..., beta=...)``.
    """
    if not (np.isfinite(beta0) and 0.0 <= beta0 <= 1.0):
        raise ValueError(f"beta0 must be in [0, 1], got {beta0!r}")
    if int(training_steps) != training_steps or training_steps < 1:
        raise ValueError(f"training_steps must be an integer >= 1, got {training_steps!r}")
    beta = beta0 + (1.0 - beta0) * float(step) / float(training_steps)
    return float(min(1.0, max(float(beta0), beta)))


class _Segment:
    """One committed game segment: steps [start, start + length) of an episode.

    Arrays (P = number of stored per-step entries = length + padding steps):
        frames: [n - 1 + P + 1, *frame_shape], o_{start-n+1} .. o_{start+P}.
        actions int64 / rewards float32 / root_values float32 / collected_at int64: [P].
        policies: float32 [P, A].
    end: T - start if the episode's end is known to lie within the stored data, else -1.
    """

    __slots__ = (
        "episode_id", "start", "length", "end", "terminated", "first_id",
        "frames", "actions", "rewards", "policies", "root_values", "collected_at",
    )

    _ARRAYS = ("frames", "actions", "rewards", "policies", "root_values", "collected_at")
    _META = ("episode_id", "start", "length", "end", "terminated", "first_id")

    def nbytes(self) -> int:
        return int(sum(getattr(self, name).nbytes for name in self._ARRAYS))

    def to_state(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._META + self._ARRAYS}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> _Segment:
        seg = cls()
        for name in cls._META + cls._ARRAYS:
            setattr(seg, name, state[name])
        return seg


class _EpisodeBuilder:
    """An episode in progress: data not yet committed, kept as lists of chunks.

    ``frames`` covers o_base .. o_cur (cur = number of actions so far); the per-step lists cover
    steps base .. cur - 1. ``seg_start`` is the first step of the next segment to commit.
    """

    _LISTS = ("frames", "actions", "rewards", "policies", "root_values", "collected_at")

    def __init__(self, first_frame: np.ndarray) -> None:
        self.first_frame = first_frame
        self.base = 0
        self.cur = 0
        self.seg_start = 0
        self.frames: list[np.ndarray] = []
        self.actions: list[np.ndarray] = []
        self.rewards: list[np.ndarray] = []
        self.policies: list[np.ndarray] = []
        self.root_values: list[np.ndarray] = []
        self.collected_at: list[np.ndarray] = []

    def last_frame(self) -> np.ndarray:
        return self.frames[-1][-1]

    def consolidate(self) -> None:
        """Concatenates every list into a single array (called only around commits)."""
        for name in self._LISTS:
            chunks = getattr(self, name)
            if len(chunks) > 1:
                setattr(self, name, [np.concatenate(chunks, axis=0)])

    def nbytes(self) -> int:
        return int(
            sum(a.nbytes for name in self._LISTS for a in getattr(self, name))
            + self.first_frame.nbytes
        )

    def to_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {name: list(getattr(self, name)) for name in self._LISTS}
        state.update(first_frame=self.first_frame, base=self.base, cur=self.cur,
                     seg_start=self.seg_start)
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> _EpisodeBuilder:
        builder = cls(state["first_frame"])
        builder.base = state["base"]
        builder.cur = state["cur"]
        builder.seg_start = state["seg_start"]
        for name in cls._LISTS:
            setattr(builder, name, list(state[name]))
        return builder


class GameSegmentReplayBuffer:
    """Replay of game segments with per-step priorities (see the module docstring).

    Args:
        capacity: maximum number of sampleable env steps; oldest segments are evicted beyond it.
        history_length: steps per game segment (EfficientZero: 400).
        stacked_observations: n, frames per model input.
        num_unroll_steps: K, unroll length of the learner.
        td_steps: td, the largest n-step horizon of the value targets.
        priority_prob_alpha: alpha of prioritized replay (0 = uniform sampling).
        priority_prob_beta: default beta of the importance-sampling weights, in [0, 1]
            (``sample`` may be given another one per call).
        prioritized_replay_eps: added to every priority given to ``update_priorities``.
        seed: seed of the buffer's own random generator (used when ``sample`` gets no rng).
    """

    def __init__(
        self,
        capacity: int,
        history_length: int,
        stacked_observations: int,
        num_unroll_steps: int,
        td_steps: int,
        priority_prob_alpha: float = 0.0,
        priority_prob_beta: float = 0.4,
        prioritized_replay_eps: float = 1e-6,
        seed: int | None = None,
    ) -> None:
        for name, value, low in (
            ("capacity", capacity, 1), ("history_length", history_length, 1),
            ("stacked_observations", stacked_observations, 1),
            ("num_unroll_steps", num_unroll_steps, 0), ("td_steps", td_steps, 1),
        ):
            if int(value) != value or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not (np.isfinite(priority_prob_alpha) and priority_prob_alpha >= 0):
            raise ValueError(f"priority_prob_alpha must be >= 0, got {priority_prob_alpha!r}")
        if not (np.isfinite(priority_prob_beta) and 0 <= priority_prob_beta <= 1):
            raise ValueError(f"priority_prob_beta must be in [0, 1], got {priority_prob_beta!r}")
        if not (np.isfinite(prioritized_replay_eps) and prioritized_replay_eps >= 0):
            raise ValueError(
                f"prioritized_replay_eps must be >= 0, got {prioritized_replay_eps!r}"
            )
        self.capacity = int(capacity)
        self.history_length = int(history_length)
        self.stacked_observations = int(stacked_observations)
        self.num_unroll_steps = int(num_unroll_steps)
        self.td_steps = int(td_steps)
        self.priority_prob_alpha = float(priority_prob_alpha)
        self.priority_prob_beta = float(priority_prob_beta)
        self.prioritized_replay_eps = float(prioritized_replay_eps)
        self._rng = np.random.default_rng(seed)

        self._frame_shape: tuple[int, ...] | None = None
        self._frame_dtype: np.dtype | None = None
        self._num_actions: int | None = None
        self._segments: list[_Segment] = []
        self._builders: dict[str, _EpisodeBuilder] = {}
        # Flat per-step priorities of the live steps, in id order: _priorities[i] has id
        # _base_id + i. _seg_first_ids[s] is the first id of _segments[s].
        self._priorities = np.zeros(0, dtype=np.float64)
        # _priorities ** priority_prob_alpha, kept in step with _priorities (sampling then costs
        # no power of the whole array).
        self._scaled_priorities = np.zeros(0, dtype=np.float64)
        self._base_id = 0
        self._next_id = 0
        self._seg_first_ids = np.zeros(0, dtype=np.int64)

    # ------------------------------------------------------------------------------------------
    # Adding data.

    @property
    def _padding(self) -> int:
        return self.num_unroll_steps + self.td_steps

    def add_episode_chunk(
        self,
        episode_id: str,
        observations: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        mcts_policy: np.ndarray,
        root_values: np.ndarray,
        terminated: bool,
        truncated: bool,
        collected_at: int,
    ) -> int:
        """Adds one chunk of an episode; commits every segment whose padding is now complete.

        Args:
            episode_id: identifies the episode across its chunks.
            observations: [L + 1, *frame_shape] frames; for a continuing chunk observations[0]
                must equal the previous chunk's last frame.
            actions: int [L], a_i, each in [0, A).
            rewards: float [L], r_i (follows a_i), finite.
            mcts_policy: float [L, A], search visit distribution at o_i.
            root_values: float [L], search value at o_i.
            terminated: the chunk ends the episode by termination (value after it is 0).
            truncated: the chunk ends the episode by a time limit (future unknown).
            collected_at: training step of the model that played the chunk (stored per step).

        Returns:
            The number of steps committed (made sampleable) by this call.

        Raises:
            ValueError: inconsistent lengths or shapes, non-finite values, invalid actions, or a
                continuing chunk whose first frame differs from the previous chunk's last frame.
        """
        episode_id = str(episode_id)
        obs, acts, rews, pols, vals = self._validate_chunk(
            episode_id, observations, actions, rewards, mcts_policy, root_values
        )
        length = acts.shape[0]
        if self._frame_shape is None:
            self._frame_shape = tuple(obs.shape[1:])
            self._frame_dtype = obs.dtype
        if self._num_actions is None and length > 0:
            self._num_actions = int(pols.shape[1])
        done = bool(terminated) or bool(truncated)

        builder = self._builders.get(episode_id)
        if builder is None:
            builder = _EpisodeBuilder(obs[0].copy())
            builder.frames.append(obs.copy())
            self._builders[episode_id] = builder
        else:
            builder.frames.append(obs[1:].copy())
        if length:
            builder.actions.append(acts.astype(np.int64))
            builder.rewards.append(rews.astype(np.float32))
            builder.policies.append(pols.astype(np.float32))
            builder.root_values.append(vals.astype(np.float32))
            builder.collected_at.append(np.full(length, int(collected_at), dtype=np.int64))
        builder.cur += length

        new_segments = self._commit_ready(builder, episode_id)
        if done:
            new_segments += self._commit_tail(builder, episode_id, terminated=bool(terminated))
            del self._builders[episode_id]
        return self._append_segments(new_segments)

    def close_episode(self, episode_id: str) -> int:
        """Ends an episode in progress as truncated, committing its tail; returns steps committed.

        Use it for episodes that will receive no more chunks (e.g. after a restore, when the env
        runners start fresh episodes). Unknown ids are ignored (returns 0).
        """
        builder = self._builders.pop(str(episode_id), None)
        if builder is None:
            return 0
        return self._append_segments(self._commit_tail(builder, str(episode_id), terminated=False))

    def episodes_in_progress(self) -> list[str]:
        """Ids of the episodes that have chunks but no end yet."""
        return list(self._builders)

    def close_episodes_except(self, live_ids: set[str]) -> tuple[int, int]:
        """Closes (as truncated) every episode in progress whose id is not in `live_ids`.

        Returns (episodes closed, steps committed by closing them).
        """
        orphans = [eid for eid in self._builders if eid not in live_ids]
        return len(orphans), sum(self.close_episode(eid) for eid in orphans)

    def _validate_chunk(
        self,
        episode_id: str,
        observations: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        mcts_policy: np.ndarray,
        root_values: np.ndarray,
    ) -> tuple[np.ndarray, ...]:
        acts = np.asarray(actions)
        if acts.ndim != 1:
            raise ValueError(f"actions: expected shape [L] (one action per step), got {acts.shape}")
        length = acts.shape[0]
        obs = np.asarray(observations)
        frame_shape = self._frame_shape if self._frame_shape is not None else obs.shape[1:]
        expected_obs = f"[{length + 1}, {', '.join(map(str, frame_shape))}]"
        if obs.ndim < 1 or obs.shape[0] != length + 1:
            raise ValueError(
                f"observations: expected shape {expected_obs} (L + 1 frames for L = {length} "
                f"actions), got {obs.shape}"
            )
        if tuple(obs.shape[1:]) != tuple(frame_shape):
            raise ValueError(
                f"observations: expected frames of shape {tuple(frame_shape)} (as in the first "
                f"chunk), i.e. {expected_obs}, got {obs.shape}"
            )
        if self._frame_dtype is not None and obs.dtype != self._frame_dtype:
            if not np.can_cast(obs.dtype, self._frame_dtype, casting="same_kind"):
                raise ValueError(
                    f"observations: expected dtype {self._frame_dtype} (as in the first chunk), "
                    f"got {obs.dtype}"
                )
            obs = obs.astype(self._frame_dtype)
        if np.issubdtype(obs.dtype, np.floating) and not np.all(np.isfinite(obs)):
            raise ValueError("observations: contain non-finite values")

        if length == 0:
            # An empty chunk (only its first frame); RLlib may send one that just ends an episode.
            pols = np.zeros((0, self._num_actions or 0), dtype=np.float32)
            rews = np.zeros(0, dtype=np.float32)
            vals = np.zeros(0, dtype=np.float32)
        else:
            if not np.issubdtype(acts.dtype, np.integer):
                raise ValueError(f"actions: expected an integer array [{length}], got {acts.dtype}")
            rews = np.asarray(rewards, dtype=np.float64)
            if rews.shape != (length,):
                raise ValueError(f"rewards: expected shape [{length}], got {rews.shape}")
            if not np.all(np.isfinite(rews)):
                raise ValueError(f"rewards: expected finite values, shape [{length}]; got "
                                 f"{int(np.sum(~np.isfinite(rews)))} non-finite")
            pols = np.asarray(mcts_policy, dtype=np.float64)
            num_actions = self._num_actions if self._num_actions is not None else (
                pols.shape[1] if pols.ndim == 2 else "A")
            if pols.ndim != 2 or pols.shape != (length, num_actions):
                raise ValueError(
                    f"mcts_policy: expected shape [{length}, {num_actions}] ([L, A]), "
                    f"got {pols.shape}"
                )
            if pols.shape[1] < 1:
                raise ValueError("mcts_policy: expected at least one action (shape [L, A], A >= 1)")
            if not np.all(np.isfinite(pols)):
                raise ValueError(f"mcts_policy: expected finite values, shape [{length}, "
                                 f"{num_actions}]")
            vals = np.asarray(root_values, dtype=np.float64)
            if vals.shape != (length,):
                raise ValueError(f"root_values: expected shape [{length}], got {vals.shape}")
            if not np.all(np.isfinite(vals)):
                raise ValueError(f"root_values: expected finite values, shape [{length}]")
            if acts.min() < 0 or acts.max() >= pols.shape[1]:
                raise ValueError(
                    f"actions: expected values in [0, {pols.shape[1]}) (A from mcts_policy), "
                    f"got min {acts.min()}, max {acts.max()}"
                )
        builder = self._builders.get(episode_id)
        if builder is not None and not np.array_equal(obs[0], builder.last_frame()):
            raise ValueError(
                f"observations[0] of a continuing chunk of episode {episode_id!r} must equal the "
                "last frame of its previous chunk"
            )
        return obs, acts, rews, pols, vals

    def _make_segment(
        self, builder: _EpisodeBuilder, episode_id: str, start: int, end: int, pad_end: int,
        episode_end: int | None, terminated: bool,
    ) -> _Segment:
        """Segment of steps [start, end) with per-step data up to pad_end (exclusive)."""
        n = self.stacked_observations
        frames = builder.frames[0]
        first_kept = max(0, start - n + 1)
        body = frames[first_kept - builder.base : pad_end - builder.base + 1]
        repeats = n - 1 - (start - first_kept)
        if repeats > 0:
            head = np.repeat(builder.first_frame[None], repeats, axis=0)
            body = np.concatenate([head, body], axis=0)
        else:
            body = body.copy()
        seg = _Segment()
        seg.episode_id = episode_id
        seg.start = int(start)
        seg.length = int(end - start)
        seg.end = -1 if episode_end is None else int(episode_end - start)
        seg.terminated = bool(terminated)
        seg.first_id = -1
        seg.frames = body
        lo, hi = start - builder.base, pad_end - builder.base
        if builder.actions:
            seg.actions = builder.actions[0][lo:hi].copy()
            seg.rewards = builder.rewards[0][lo:hi].copy()
            seg.policies = builder.policies[0][lo:hi].copy()
            seg.root_values = builder.root_values[0][lo:hi].copy()
            seg.collected_at = builder.collected_at[0][lo:hi].copy()
        return seg

    def _drop_before(self, builder: _EpisodeBuilder, new_base: int) -> None:
        """Forgets builder data before step new_base (frames and per-step arrays)."""
        cut = new_base - builder.base
        if cut <= 0:
            return
        builder.frames = [builder.frames[0][cut:]]
        for name in ("actions", "rewards", "policies", "root_values", "collected_at"):
            chunks = getattr(builder, name)
            if chunks:
                setattr(builder, name, [chunks[0][cut:]])
        builder.base = new_base

    def _commit_ready(self, builder: _EpisodeBuilder, episode_id: str) -> list[_Segment]:
        """Segments whose padding is full (the episode reached end + K + td)."""
        segments = []
        while builder.seg_start + self.history_length + self._padding <= builder.cur:
            builder.consolidate()
            start = builder.seg_start
            end = start + self.history_length
            segments.append(self._make_segment(
                builder, episode_id, start, end, end + self._padding, None, False
            ))
            builder.seg_start = end
            self._drop_before(builder, max(0, end - self.stacked_observations + 1))
        return segments

    def _commit_tail(
        self, builder: _EpisodeBuilder, episode_id: str, terminated: bool
    ) -> list[_Segment]:
        """Every remaining segment of an ended episode (padding stops at o_T)."""
        segments = []
        builder.consolidate()
        while builder.seg_start < builder.cur:
            start = builder.seg_start
            end = min(start + self.history_length, builder.cur)
            pad_end = min(end + self._padding, builder.cur)
            segments.append(self._make_segment(
                builder, episode_id, start, end, pad_end, builder.cur, terminated
            ))
            builder.seg_start = end
        return segments

    def _append_segments(self, segments: list[_Segment]) -> int:
        """Assigns ids to new segments, evicts beyond capacity, then sets their priority.

        New steps get the max priority of the older steps that survive the eviction (1.0 if none
        do), i.e. of the buffer as it now is, not of anything evicted.
        """
        if not segments:
            return 0
        total = 0
        for seg in segments:
            seg.first_id = self._next_id
            self._next_id += seg.length
            total += seg.length
            self._segments.append(seg)
        placeholder = np.full(total, np.nan, dtype=np.float64)
        self._priorities = np.concatenate([self._priorities, placeholder])
        self._scaled_priorities = np.concatenate([self._scaled_priorities, placeholder])
        self._evict()
        new_start = max(0, self._priorities.shape[0] - total)  # eviction may reach new steps
        old = self._priorities[:new_start]
        priority = float(old.max()) if old.size else _INITIAL_PRIORITY
        self._priorities[new_start:] = priority
        self._scaled_priorities[new_start:] = self._scale(self._priorities[new_start:])
        self._seg_first_ids = np.array([s.first_id for s in self._segments], dtype=np.int64)
        return total

    def _evict(self) -> None:
        num_steps = self._priorities.shape[0]
        drop_segments = drop_steps = 0
        while (num_steps - drop_steps > self.capacity
               and drop_segments < len(self._segments) - 1):
            drop_steps += self._segments[drop_segments].length
            drop_segments += 1
        if drop_segments:
            del self._segments[:drop_segments]
            self._priorities = self._priorities[drop_steps:].copy()
            self._scaled_priorities = self._scaled_priorities[drop_steps:].copy()
            self._base_id += drop_steps
            self._seg_first_ids = np.array([s.first_id for s in self._segments], dtype=np.int64)

    # ------------------------------------------------------------------------------------------
    # Sampling and priorities.

    def _scale(self, priorities: np.ndarray) -> np.ndarray:
        """p^alpha of a float64 array; always this array power, so a restored buffer (which
        recomputes them all) holds bit-identical values."""
        return np.asarray(priorities, dtype=np.float64) ** self.priority_prob_alpha

    def sample(
        self,
        batch_size: int,
        rng: np.random.Generator | None = None,
        beta: float | None = None,
    ) -> SampledWindows:
        """Samples ``batch_size`` distinct steps (without replacement) and returns their windows.

        As EfficientZero (``np.random.choice(N, B, replace=False, p=P)``): the steps are drawn one
        after the other, each with probability P(i) = p_i^alpha / sum_j p_j^alpha renormalised
        over the steps not drawn yet (uniform for alpha = 0). The weights use the undepleted
        P(i): w_i = (N P(i))^-beta / max over the batch.

        Args:
            batch_size: B, at most the number of sampleable steps.
            rng: random generator for the draw and for the random actions past an episode's end;
                None uses the buffer's own (seeded, checkpointed) generator.
            beta: importance-sampling exponent in [0, 1] for this batch (e.g.
                ``annealed_beta(priority_prob_beta, step, training_steps)``); None uses the
                configured ``priority_prob_beta``.

        Returns:
            A ``SampledWindows`` (see its docstring for the fields and shapes); its ``indices``
            are distinct.

        Raises:
            ValueError: nothing is sampleable yet, batch_size < 1, batch_size larger than the
                number of sampleable steps (or, with alpha > 0, than the number of steps with a
                non-zero priority, possible only with prioritized_replay_eps = 0), or beta
                outside [0, 1].
        """
        num_steps = self.num_steps()
        if num_steps == 0:
            raise ValueError("sample: the buffer holds no sampleable steps yet (segments are "
                             "committed once their padding is full or their episode ends)")
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        batch_size = int(batch_size)
        if batch_size > num_steps:
            raise ValueError(
                f"sample: batch_size {batch_size} is larger than the {num_steps} sampleable "
                "steps; a batch is drawn without replacement"
            )
        beta = self.priority_prob_beta if beta is None else beta
        if not (np.isfinite(beta) and 0.0 <= beta <= 1.0):
            raise ValueError(f"beta must be in [0, 1], got {beta!r}")
        rng = self._rng if rng is None else rng
        scaled = None
        if self.priority_prob_alpha != 0.0:
            scaled = self._scaled_priorities
            if not scaled.sum() > 0:  # every priority is 0 (possible only with eps = 0): uniform
                scaled = None
        if scaled is None:
            flat = rng.choice(num_steps, size=batch_size, replace=False)
            weights = np.ones(batch_size, dtype=np.float32)
        else:
            probs = scaled / scaled.sum()
            num_nonzero = int(np.count_nonzero(probs))
            if batch_size > num_nonzero:
                raise ValueError(
                    f"sample: batch_size {batch_size} is larger than the {num_nonzero} steps "
                    "with a non-zero priority (batches are drawn without replacement); use "
                    "prioritized_replay_eps > 0"
                )
            flat = rng.choice(num_steps, size=batch_size, replace=False, p=probs)
            weights = (num_steps * probs[flat]) ** (-float(beta))
            weights = (weights / weights.max()).astype(np.float32)
        ids = np.asarray(flat, dtype=np.int64) + self._base_id
        return self._gather(ids, weights, rng)

    def _gather(
        self, ids: np.ndarray, weights: np.ndarray, rng: np.random.Generator
    ) -> SampledWindows:
        n, K, td = self.stacked_observations, self.num_unroll_steps, self.td_steps
        batch = ids.shape[0]
        seg_pos = np.searchsorted(self._seg_first_ids, ids, side="right") - 1
        num_frames = n + K + td
        frames = np.empty((batch, num_frames, *self._frame_shape), dtype=self._frame_dtype)
        actions = np.empty((batch, K + td), dtype=np.int64)
        rewards = np.empty((batch, K + td), dtype=np.float32)
        root_values = np.empty((batch, K + td + 1), dtype=np.float32)
        policies = np.empty((batch, K + 1, self._num_actions), dtype=np.float32)
        steps_left = np.empty(batch, dtype=np.int64)
        terminated = np.empty(batch, dtype=bool)
        collected_at = np.empty(batch, dtype=np.int64)
        steps = np.empty(batch, dtype=np.int64)
        episode_ids = []
        frame_offsets = np.arange(num_frames)
        step_offsets = np.arange(K + td + 1)
        for b in range(batch):
            seg = self._segments[seg_pos[b]]
            local = int(ids[b] - seg.first_id)
            if local + num_frames <= seg.frames.shape[0]:
                frames[b] = seg.frames[local : local + num_frames]  # one copy, no fancy index
            else:  # past o_T: repeat it
                frames[b] = seg.frames[np.minimum(local + frame_offsets, seg.frames.shape[0] - 1)]
            idx = np.minimum(local + step_offsets, seg.actions.shape[0] - 1)
            actions[b] = seg.actions[idx[:-1]]
            rewards[b] = seg.rewards[idx[:-1]]
            root_values[b] = seg.root_values[idx]
            policies[b] = seg.policies[idx[: K + 1]]
            if seg.end >= 0 and seg.end - local <= K + td:
                steps_left[b] = seg.end - local
                terminated[b] = seg.terminated
            else:
                steps_left[b] = K + td + 1
                terminated[b] = False
            collected_at[b] = seg.collected_at[local]
            steps[b] = seg.start + local
            episode_ids.append(seg.episode_id)
        # Positions at and beyond the episode end: no action, reward, value or policy.
        past_end = step_offsets[None, :] >= steps_left[:, None]  # [B, K + td + 1]
        random_actions = rng.integers(0, self._num_actions, size=(batch, K + td))
        actions = np.where(past_end[:, :-1], random_actions, actions)
        rewards[past_end[:, :-1]] = 0.0
        root_values[past_end] = 0.0
        policies[past_end[:, : K + 1]] = 0.0
        return SampledWindows(
            frames=frames, actions=actions, rewards=rewards, root_values=root_values,
            policies=policies, steps_left=steps_left, terminated=terminated,
            collected_at=collected_at, weights=weights, indices=ids,
            episode_ids=tuple(episode_ids), steps=steps,
        )

    def update_priorities(self, indices: np.ndarray, priorities: np.ndarray) -> None:
        """Sets the priorities of sampled steps to ``priorities + prioritized_replay_eps``.

        Args:
            indices: int64 [B], ``SampledWindows.indices``. Steps evicted since they were sampled
                are ignored. For repeated indices the last priority wins.
            priorities: float [B], non-negative and finite (e.g. |value error|).
        """
        ids = np.asarray(indices, dtype=np.int64).reshape(-1)
        prios = np.asarray(priorities, dtype=np.float64).reshape(-1)
        if prios.shape != ids.shape:
            raise ValueError(
                f"priorities: expected shape [{ids.shape[0]}] (one per index), got "
                f"{np.shape(priorities)}"
            )
        if not np.all(np.isfinite(prios)) or np.any(prios < 0):
            raise ValueError(f"priorities: expected finite values >= 0, shape [{ids.shape[0]}]")
        prios = prios + self.prioritized_replay_eps
        live = (ids >= self._base_id) & (ids < self._next_id)
        if not np.any(live):
            return
        self._priorities[ids[live] - self._base_id] = prios[live]
        self._scaled_priorities[ids[live] - self._base_id] = self._scale(prios[live])

    # ------------------------------------------------------------------------------------------
    # Sizes and stats.

    def num_steps(self) -> int:
        """Number of sampleable (committed) steps."""
        return int(self._priorities.shape[0])

    def __len__(self) -> int:
        return self.num_steps()

    def num_segments(self) -> int:
        """Number of committed segments."""
        return len(self._segments)

    def num_pending_steps(self) -> int:
        """Steps of episodes in progress that are not committed yet (not sampleable)."""
        return int(sum(b.cur - b.seg_start for b in self._builders.values()))

    def memory_bytes(self, include_pending: bool = True) -> int:
        """Bytes held by the committed segments and priorities (plus the builders if asked).

        The priorities take 16 bytes per step (p_i and p_i^alpha).
        """
        total = (sum(seg.nbytes() for seg in self._segments) + self._priorities.nbytes
                 + self._scaled_priorities.nbytes)
        if include_pending:
            total += sum(b.nbytes() for b in self._builders.values())
        return int(total)

    def bytes_per_step(self) -> float:
        """Committed bytes (segments + priorities) per sampleable step (0.0 when empty)."""
        num_steps = self.num_steps()
        return self.memory_bytes(include_pending=False) / num_steps if num_steps else 0.0

    def frame_bytes(self) -> int:
        """Bytes of one frame (0 before the first chunk)."""
        if self._frame_shape is None:
            return 0
        itemsize = np.dtype(self._frame_dtype).itemsize
        return int(np.prod(self._frame_shape, dtype=np.int64) * itemsize)

    def stats(self) -> dict[str, float]:
        """Scalar metrics: sizes, memory and the priority distribution."""
        prios = self._priorities
        frame_bytes = self.frame_bytes()
        return {
            "num_steps": self.num_steps(),
            "num_segments": self.num_segments(),
            "num_episodes_in_progress": len(self._builders),
            "num_pending_steps": self.num_pending_steps(),
            "memory_bytes": self.memory_bytes(),
            "bytes_per_step": self.bytes_per_step(),
            "frames_per_step": self.bytes_per_step() / frame_bytes if frame_bytes else 0.0,
            "priority_mean": float(prios.mean()) if prios.size else 0.0,
            "priority_max": float(prios.max()) if prios.size else 0.0,
            "priority_min": float(prios.min()) if prios.size else 0.0,
        }

    # ------------------------------------------------------------------------------------------
    # Checkpointing.

    def get_state(self) -> dict[str, Any]:
        """The whole buffer as plain python/numpy objects (picklable).

        Committed segment arrays are never modified after commit, so they are shared, not copied.
        """
        return {
            "version": _STATE_VERSION,
            "config": {
                "capacity": self.capacity,
                "history_length": self.history_length,
                "stacked_observations": self.stacked_observations,
                "num_unroll_steps": self.num_unroll_steps,
                "td_steps": self.td_steps,
                "priority_prob_alpha": self.priority_prob_alpha,
                "priority_prob_beta": self.priority_prob_beta,
                "prioritized_replay_eps": self.prioritized_replay_eps,
            },
            "frame_shape": self._frame_shape,
            "frame_dtype": None if self._frame_dtype is None else np.dtype(self._frame_dtype).str,
            "num_actions": self._num_actions,
            "segments": [seg.to_state() for seg in self._segments],
            "builders": {eid: b.to_state() for eid, b in self._builders.items()},
            "priorities": self._priorities.copy(),
            "base_id": self._base_id,
            "next_id": self._next_id,
            "rng_state": self._rng.bit_generator.state,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Restores a ``get_state`` dict.

        The window geometry (stacked_observations, num_unroll_steps, td_steps) must match this
        buffer's; capacity and the priority settings are this buffer's own (segments beyond the
        capacity are evicted). States of version 1 (before new steps took the max of the live
        priorities) load too; their all-time ``max_priority`` is no longer used.
        """
        if state.get("version") not in _LOADABLE_STATE_VERSIONS:
            raise ValueError(
                f"replay buffer state: unknown version {state.get('version')!r} (this buffer "
                f"loads versions {', '.join(map(str, _LOADABLE_STATE_VERSIONS))})"
            )
        config = state["config"]
        for name in ("stacked_observations", "num_unroll_steps", "td_steps"):
            if config[name] != getattr(self, name):
                raise ValueError(
                    f"replay buffer state: {name} is {config[name]} in the state but "
                    f"{getattr(self, name)} in this buffer; the stored windows do not fit"
                )
        frame_shape = state["frame_shape"]
        self._frame_shape = None if frame_shape is None else tuple(frame_shape)
        self._frame_dtype = None if state["frame_dtype"] is None else np.dtype(state["frame_dtype"])
        self._num_actions = state["num_actions"]
        self._segments = [_Segment.from_state(s) for s in state["segments"]]
        self._builders = {
            eid: _EpisodeBuilder.from_state(b) for eid, b in state["builders"].items()
        }
        self._priorities = np.array(state["priorities"], dtype=np.float64)
        self._scaled_priorities = self._scale(self._priorities)
        self._base_id = int(state["base_id"])
        self._next_id = int(state["next_id"])
        self._rng = np.random.default_rng()
        self._rng.bit_generator.state = state["rng_state"]
        self._seg_first_ids = np.array([s.first_id for s in self._segments], dtype=np.int64)
        self._evict()
