"""Batched MuZero / EfficientZero Monte-Carlo tree search, compiled with Cython.

Usage::

    from cython_mcts import MCTSConfig, greedy_actions, run_mcts

    cfg = MCTSConfig(num_simulations=50)
    out = run_mcts(root_logits, root_values, recurrent_fn, cfg, noise=noise, legal_actions=mask,
                   seed=int(rng.integers(2**63)))
    out.visit_counts   # int32 [B, A]
    out.root_values    # float32 [B]
    out.search_policy  # float32 [B, A]
    actions = greedy_actions(out.visit_counts, rng)   # int64 [B], rng: numpy Generator

Semantics (see docs/design.md section 3.1; the pure-Python reference lives in
`tests/mcts_reference.py`):

- Node `s >= 1` of every root is made by simulation `s` (the s-th call of `recurrent_fn`);
  `parent_ids[b]` names the node/hidden state to expand from (0 = the root's state) and
  `depths[b]` the depth of the node being made (children of the root: 1).
- Root priors are the softmax of `root_logits` over the legal actions (illegal actions get prior
  0 and are never selected). `noise` is restricted to the legal actions and renormalised to sum
  to 1 over them (for Dirichlet noise over all A actions, this is exactly a Dirichlet sample over
  the legal actions), then mixed in: `prior = (1 - frac) * prior + frac * noise`. A noise row must
  therefore put positive mass on at least one legal action. Priors below the root are the
  softmax of the logits `recurrent_fn` returns, over all actions.
- With `value_prefix=True`, reward(child) = prefix(child) - prefix(parent), or prefix(child) when
  the parent's depth is a multiple of `lstm_horizon_len`; otherwise the first output of
  `recurrent_fn` is the reward itself.
- pUCT selection with MuZero's constants, EfficientZero's mean-Q for unvisited children, and
  min-max statistics (one per root) updated with Q(x) = reward(x) + discount * value(x) for every
  node x on each backup path except the root (EfficientZero). They start empty; while
  max <= min, Qn = Q clipped to [0, 1]. The root starts with one visit and its predicted value
  (counted in `root_values`, never in the statistics).
- Ties are broken at random, reproducibly: children (legal ones, at the root) whose scores are
  within 1e-6 of the best are tied, and one is drawn uniformly from root b's own stream of a
  small generator seeded from `(seed, b)` (splitmix64; exact specification in
  `cython_mcts/_tree.pyx`). Same inputs and seed, same result; there is no global or
  clock-seeded state.
- `greedy_actions(visit_counts, rng)`: the acting-time greedy action, most visited, ties drawn
  with the caller's numpy Generator.

Gumbel MuZero root search (docs/design.md section 3.1b; reference: `tests/gumbel_reference.py`)::

    from cython_mcts import MCTSConfig, run_gumbel_mcts

    g = rng.gumbel(size=root_logits.shape).astype(np.float32) * gumbel_scale  # zeros: greedy
    out = run_gumbel_mcts(root_logits, root_values, recurrent_fn, MCTSConfig(num_simulations=16),
                          g, legal_actions=mask)
    out.action           # int64 [B]: the action to play
    out.improved_policy  # float32 [B, A]: softmax(logits + sigma(completed Q)), the policy target
    out.visit_counts     # int32 [B, A]
    out.root_values      # float32 [B]

Inputs that are float arrays of another float dtype (float16/float64, or torch CPU tensors)
are converted to float32; wrong shapes, non-float dtypes and non-finite values raise
`ValueError`. No torch is imported here.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from cython_mcts._tree import gumbel_search as _gumbel_search
from cython_mcts._tree import search as _search

__all__ = ["Q_NORMALIZATIONS", "GumbelSearchOutput", "MCTSConfig", "RecurrentFn", "SearchOutput",
           "greedy_actions", "run_gumbel_mcts", "run_mcts"]

RecurrentFn = Callable[
    [np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]
]
"""(parent_ids int64[B], actions int64[B], depths int64[B])
-> (value_prefix float32[B], value float32[B], logits float32[B, A])."""

_MAX_SIMULATIONS = 2**31 - 2
# How `run_gumbel_mcts` rescales completed Q: each node's min and max (mctx) or the tree's.
Q_NORMALIZATIONS = ("node", "tree")
_SEED_LIMIT = 2**64


@dataclass(frozen=True)
class MCTSConfig:
    """Settings of one search.

    Attributes:
        num_simulations: simulations per root (calls of `recurrent_fn`), >= 1.
        discount: per-step discount in [0, 1] (EfficientZero: 0.997 ** 4 with frame skip 4).
        pb_c_base: pUCT base constant, > 0.
        pb_c_init: pUCT init constant, >= 0.
        root_exploration_fraction: weight of the noise in the root priors, in [0, 1].
        value_prefix: True if `recurrent_fn`'s first output is EfficientZero's value prefix,
            False if it is the reward (MuZero).
        lstm_horizon_len: depths at which the value prefix restarts, >= 1.
        value_delta_max: lower bound on (max - min) when normalising Q, >= 0.
    """

    num_simulations: int = 50
    discount: float = 0.997**4
    pb_c_base: float = 19652
    pb_c_init: float = 1.25
    root_exploration_fraction: float = 0.25
    value_prefix: bool = True
    lstm_horizon_len: int = 5
    value_delta_max: float = 0.01

    def __post_init__(self) -> None:
        def set_(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        def as_int(name: str, low: int, high: int) -> None:
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
                raise ValueError(f"MCTSConfig.{name} must be an int, got {value!r}")
            if not low <= int(value) <= high:
                raise ValueError(f"MCTSConfig.{name} must be in [{low}, {high}], got {value!r}")
            set_(name, int(value))

        def as_float(name: str, low: float, high: float, low_open: bool = False) -> None:
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
                raise ValueError(f"MCTSConfig.{name} must be a real number, got {value!r}")
            value = float(value)
            ok = math.isfinite(value) and value <= high and (value > low if low_open else
                                                               value >= low)
            if not ok:
                interval = f"{'(' if low_open else '['}{low}, {high}]"
                raise ValueError(f"MCTSConfig.{name} must be finite and in {interval}, "
                                 f"got {value!r}")
            set_(name, value)

        as_int("num_simulations", 1, _MAX_SIMULATIONS)
        as_float("discount", 0.0, 1.0)
        as_float("pb_c_base", 0.0, math.inf, low_open=True)
        as_float("pb_c_init", 0.0, math.inf)
        as_float("root_exploration_fraction", 0.0, 1.0)
        if not isinstance(self.value_prefix, (bool, np.bool_)):
            raise ValueError(f"MCTSConfig.value_prefix must be a bool, got {self.value_prefix!r}")
        set_("value_prefix", bool(self.value_prefix))
        as_int("lstm_horizon_len", 1, 2**31 - 1)
        as_float("value_delta_max", 0.0, math.inf)


@dataclass(frozen=True, eq=False)
class SearchOutput:
    """Result of `run_mcts`.

    Attributes:
        visit_counts: int32 [B, A], visits of the root's children; each row sums to
            `num_simulations`, illegal actions get 0.
        root_values: float32 [B], (root value + every value backed up to the root) /
            (num_simulations + 1).
    """

    visit_counts: np.ndarray
    root_values: np.ndarray

    @property
    def search_policy(self) -> np.ndarray:
        """float32 [B, A]: visit_counts normalised per root."""
        counts = self.visit_counts.astype(np.float32)
        return counts / counts.sum(axis=1, keepdims=True)


@dataclass(frozen=True, eq=False)
class GumbelSearchOutput:
    """Result of `run_gumbel_mcts`.

    Attributes:
        action: int64 [B], the action to play: among the most visited root actions (all of
            them legal), the one with the highest g + logits + sigma(completed Q) (mctx).
        improved_policy: float32 [B, A], softmax(logits + sigma(completed Q)) over the legal
            actions (0 for illegal ones): the policy target of Gumbel MuZero.
        visit_counts: int32 [B, A], visits of the root's children; each row sums to
            `num_simulations`, illegal actions get 0.
        root_values: float32 [B], (root value + every value backed up to the root) /
            (num_simulations + 1), as `run_mcts`.
    """

    action: np.ndarray
    improved_policy: np.ndarray
    visit_counts: np.ndarray
    root_values: np.ndarray


def _root_shape(root_logits: Any) -> tuple[int, int]:
    """(B, A) of `root_logits`, or a ValueError unless it is two-dimensional with B, A >= 1."""
    try:
        logits_shape = np.shape(root_logits)
    except Exception as exc:
        raise ValueError(f"root_logits must be a float32 [B, A] array: {exc}") from exc
    if len(logits_shape) != 2:
        raise ValueError(f"root_logits must be a float32 [B, A] array, got shape {logits_shape}")
    batch, num_actions = (int(n) for n in logits_shape)
    if batch < 1 or num_actions < 1:
        raise ValueError(f"root_logits must be a float32 [B, A] array with B >= 1 and A >= 1, "
                         f"got shape {logits_shape}")
    return batch, num_actions


def _float_array(name: str, value: Any, shape: tuple[int, ...], shape_text: str) -> np.ndarray:
    """`value` as a C-contiguous finite float32 array of `shape`, or a ValueError naming `name`."""
    expected = f"float32 {shape_text}"
    try:
        array = np.asarray(value)
    except Exception as exc:  # e.g. a CUDA tensor
        raise ValueError(f"{name} must be a {expected} array; could not convert "
                         f"{type(value).__name__}: {exc}") from exc
    if array.dtype.kind != "f":
        raise ValueError(f"{name} must be a {expected} array, got dtype {array.dtype}")
    if array.shape != shape:
        raise ValueError(f"{name} must be a {expected} array, got shape {array.shape}")
    with np.errstate(over="ignore"):
        array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        index = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
        raise ValueError(f"{name} must be finite (as float32); non-finite value at {list(index)}")
    return array


def _legal_mask(value: Any, shape: tuple[int, int]) -> np.ndarray:
    expected = f"bool [B={shape[0]}, A={shape[1]}]"
    try:
        mask = np.asarray(value)
    except Exception as exc:
        raise ValueError(f"legal_actions must be a {expected} array; could not convert "
                         f"{type(value).__name__}: {exc}") from exc
    if mask.shape != shape:
        raise ValueError(f"legal_actions must be a {expected} array, got shape {mask.shape}")
    if mask.dtype != np.bool_:
        # Integer 0/1 masks convert without loss; anything else is refused.
        if mask.dtype.kind not in "iu" or not np.isin(mask, (0, 1)).all():
            raise ValueError(f"legal_actions must be a {expected} array (or integer 0/1), "
                             f"got dtype {mask.dtype}")
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    empty = np.flatnonzero(~mask.any(axis=1))
    if empty.size:
        raise ValueError(f"legal_actions: root {int(empty[0])} has no legal action "
                         f"(every root needs at least one)")
    return mask


def _seed_array(seed: Any, batch: int) -> np.ndarray:
    """`seed` (one int, or one per root) as uint64 [B], or a ValueError naming `seed`."""
    message = f"seed must be an int in [0, 2**64 - 1] or B={batch} of them"

    def one(value: Any) -> int:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
            raise ValueError(f"{message}, got {seed!r}")
        if not 0 <= int(value) < _SEED_LIMIT:
            raise ValueError(f"{message}, got {seed!r}")
        return int(value)

    if isinstance(seed, np.ndarray | list | tuple):
        values = list(np.asarray(seed, dtype=object).reshape(-1)) if np.ndim(seed) == 1 else None
        if values is None or len(values) != batch:
            raise ValueError(f"{message}, got shape {np.shape(seed)}")
        return np.array([one(v) for v in values], dtype=np.uint64)
    return np.full(batch, one(seed), dtype=np.uint64)


def run_mcts(
    root_logits: np.ndarray,
    root_values: np.ndarray,
    recurrent_fn: RecurrentFn,
    config: MCTSConfig,
    noise: np.ndarray | None = None,
    legal_actions: np.ndarray | None = None,
    seed: int | np.ndarray = 0,
) -> SearchOutput:
    """Runs `config.num_simulations` simulations from each of B roots at once.

    Args:
        root_logits: float32 [B, A], prior logits at the roots.
        root_values: float32 [B], predicted values of the roots.
        recurrent_fn: called once per simulation for the whole batch as
            `recurrent_fn(parent_ids, actions, depths)` with int64 [B] arrays: `parent_ids[b]`
            is the state to expand from (0: root b's state; s >= 1: the state made by the
            s-th call), `actions[b]` the action taken from it, `depths[b]` the depth of the
            node being made (>= 1). Returns `(value_prefix, value, logits)`: float32 [B],
            float32 [B], float32 [B, A] (other float dtypes are converted; must be finite).
            Fresh input arrays are passed on every call, so the callback may keep them.
        config: an `MCTSConfig`.
        noise: float32 [B, A], non-negative (e.g. Dirichlet) noise for the root priors, or None.
            Only the legal actions' entries are used, renormalised to sum to 1.
        legal_actions: bool [B, A] (or integer 0/1), the roots' legal actions; None = all.
        seed: int in [0, 2**64 - 1] (Python or numpy integer, not a bool; negative or larger
            values are refused, not reduced), the seed of the tie-breaking generator. Root b
            draws from its own splitmix64 stream, initial state
            `mix(mix(seed + G) + (b + 1) * G)` (G = 0x9E3779B97F4A7C15, arithmetic mod 2**64),
            and a draw among n >= 2 tied children takes the next output x with
            `x >= 2**64 mod n` (rejection) and picks the `(x % n)`-th tied child in ascending
            action order; a single best child draws nothing. See `cython_mcts/_tree.pyx` for
            the exact specification. Identical inputs and seed give identical results; pass a
            fresh seed per search (e.g. from the caller's numpy Generator) for independent ties.
            Or one such seed per root, [B] (e.g. one from each env slot's generator): root b's
            stream then starts from `seed[b]` in the same formula, so an int `s` equals
            `[s] * B`.

    Returns:
        `SearchOutput` with `visit_counts` int32 [B, A] and `root_values` float32 [B].

    Raises:
        ValueError: on a wrong shape/dtype, a non-finite value, an all-illegal root, a
            non-callable `recurrent_fn`, a bad output of it, a bad `seed`, or root values that
            overflow to infinity in the backups (finite but huge model outputs).
    """
    if not isinstance(config, MCTSConfig):
        raise ValueError(f"config must be an MCTSConfig, got {type(config).__name__}")
    if not callable(recurrent_fn):
        raise ValueError(f"recurrent_fn must be callable, got {type(recurrent_fn).__name__}")
    batch, num_actions = _root_shape(root_logits)
    seeds = _seed_array(seed, batch)
    logits = _float_array("root_logits", root_logits, (batch, num_actions), "[B, A]")
    values = _float_array("root_values", root_values, (batch,), f"[B={batch}]")
    if legal_actions is None:
        mask = np.ones((batch, num_actions), dtype=np.uint8)
    else:
        mask = _legal_mask(legal_actions, (batch, num_actions))
    noise_array = None
    if noise is not None:
        noise_array = _float_array("noise", noise, (batch, num_actions),
                                   f"[B={batch}, A={num_actions}]")
        if (noise_array < 0).any():
            raise ValueError("noise must be non-negative (e.g. Dirichlet samples)")
        mass = np.where(mask.astype(bool), noise_array, 0.0).sum(axis=1)
        bad = np.flatnonzero(~(mass > 0))
        if bad.size:
            raise ValueError(f"noise row {int(bad[0])} has no mass on the legal actions of its "
                             f"root (it is renormalised over them)")
    counts, root_value = _search(
        logits, values, recurrent_fn, config.num_simulations, config.discount,
        config.pb_c_base, config.pb_c_init, config.root_exploration_fraction,
        config.value_prefix, config.lstm_horizon_len, config.value_delta_max, noise_array, mask,
        seeds,
    )
    bad = np.flatnonzero(~np.isfinite(root_value))
    if bad.size:
        raise ValueError(
            f"run_mcts: the root value of root(s) {bad.tolist()} is not finite although every "
            "model output was: the values or value prefixes are too large for float32 backups "
            "(check the model and its inputs)"
        )
    return SearchOutput(visit_counts=counts, root_values=root_value)


def _considered_visit_sequence(num_considered: int, num_simulations: int) -> list[int]:
    """mctx's `get_sequence_of_considered_visits`: at simulation i (0-based) the root picks among
    its considered actions visited exactly `sequence[i]` times (sequential halving).

    With m <= 1 considered actions the sequence is 0, 1, 2, ... Otherwise the simulations go
    in rounds: while c actions are still considered (c = m first, then max(2, c // 2) after
    each round), a round visits each of them max(1, int(n / (ceil(log2 m) * c))) times, one
    visit per action per pass (the sequence gets c copies of the common visit count per pass);
    the sequence is cut at n = num_simulations.
    """
    if num_considered <= 1:
        return list(range(num_simulations))
    log2_m = (num_considered - 1).bit_length()      # ceil(log2(m)) for m >= 2
    sequence: list[int] = []
    count = 0
    considered = num_considered
    while len(sequence) < num_simulations:
        passes = max(1, int(num_simulations / (log2_m * considered)))
        for _ in range(passes):
            sequence.extend([count] * considered)
            count += 1
        considered = max(2, considered // 2)
    return sequence[:num_simulations]


@functools.lru_cache(maxsize=64)
def _considered_visit_table(rows: int, num_simulations: int) -> np.ndarray:
    """int32 [rows, num_simulations], row m = `_considered_visit_sequence(m, num_simulations)`
    (mctx's `get_table_of_considered_visits`); read-only, cached."""
    table = np.array([_considered_visit_sequence(m, num_simulations) for m in range(rows)],
                     dtype=np.int32).reshape(rows, num_simulations)
    table.setflags(write=False)
    return table


def _nonnegative_real(name: str, value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return value


def run_gumbel_mcts(
    root_logits: np.ndarray,
    root_values: np.ndarray,
    recurrent_fn: RecurrentFn,
    config: MCTSConfig,
    gumbel: np.ndarray,
    legal_actions: np.ndarray | None = None,
    *,
    max_num_considered_actions: int = 16,
    value_scale: float = 0.1,
    maxvisit_init: float = 50.0,
    q_normalization: str = "node",
) -> GumbelSearchOutput:
    """Gumbel MuZero search (Danihelka et al., ICLR 2022) from each of B roots at once.

    The semantics and defaults of mctx's `gumbel_muzero_policy` with
    `qtransform_completed_by_mix_value` (docs/design.md section 3.1b), on the tree storage,
    ids, value-prefix rewards and backups of `run_mcts` (section 3.1):

    - sigma(completed Q) of a node: visited children get Q = reward + discount * mean value,
      unvisited ones the mixed value (raw value + sum N * sum_visited prior * Q / sum_visited
      prior) / (sum N + 1); all are rescaled by (q - min) / max(max - min, 1e-8) over the
      node's actions and multiplied by (maxvisit_init + max N) * value_scale. At the root the
      illegal actions count in the min and max with the mixed value, as in mctx.
      `q_normalization="tree"` rescales instead as `run_mcts` does (EfficientZero V2's Gumbel
      search): by the root's min-max statistics over the Q of every non-root node of its tree
      (updated by each backup), (q - min) / max(max - min, config.value_delta_max), clipped
      to [0, 1] (q itself, clipped, while max <= min). A gap between two actions then counts
      for its size against the tree's range, not as the whole [0, 1] of the node.
    - Root: the considered actions are the top min(max_num_considered_actions, legal A) by
      g + logits; simulation i (0-based) takes, among the legal actions visited exactly
      `table[num_considered][i]` times (mctx's sequential-halving visit schedule), the one with
      the highest max(-1e9, g + logits - max legal logit + sigma(q)).
    - Below the root: argmax of softmax(logits + sigma(q)) - N(a) / (1 + sum N), deterministic.
    - Every argmax takes the first (lowest) action among equal scores; no random tie-breaking.
    - Arithmetic in double precision (mctx: float32).

    Args:
        root_logits: float32 [B, A], prior logits at the roots.
        root_values: float32 [B], predicted values of the roots.
        recurrent_fn: as for `run_mcts`: `recurrent_fn(parent_ids, actions, depths)` with
            int64 [B] arrays, returning `(value_prefix, value, logits)` float32 [B], [B], [B, A].
        config: an `MCTSConfig`; its `num_simulations`, `discount`, `value_prefix` and
            `lstm_horizon_len` are used, and `value_delta_max` with q_normalization="tree"
            (the pUCT constants and `root_exploration_fraction` are not).
        gumbel: float32 [B, A], finite, Gumbel(0, 1) noise already multiplied by the Gumbel
            scale (zeros for greedy play); only the legal actions' entries are read.
        legal_actions: bool [B, A] (or integer 0/1), the roots' legal actions; None = all.
            Illegal actions are never visited and get probability 0 in the improved policy.
        max_num_considered_actions: int >= 1, the number of root actions sequential halving
            starts from (fewer when a root has fewer legal actions).
        value_scale: finite >= 0, sigma's scale of the Q values (0: the improved policy is the
            prior).
        maxvisit_init: finite >= 0, sigma's offset added to the largest visit count.
        q_normalization: "node" (mctx: each node's own min and max) or "tree" (the root's
            min-max statistics over the tree, as `run_mcts`).

    Returns:
        `GumbelSearchOutput` with `action` int64 [B], `improved_policy` float32 [B, A],
        `visit_counts` int32 [B, A] and `root_values` float32 [B].

    Raises:
        ValueError: on a wrong shape/dtype, a non-finite value (root logits, root values,
            gumbel), an all-illegal root, a non-callable `recurrent_fn`, a bad output of it,
            a bad `max_num_considered_actions`, `value_scale`, `maxvisit_init` or
            `q_normalization`, or root
            values that overflow to infinity in the backups.
    """
    if not isinstance(config, MCTSConfig):
        raise ValueError(f"config must be an MCTSConfig, got {type(config).__name__}")
    if not callable(recurrent_fn):
        raise ValueError(f"recurrent_fn must be callable, got {type(recurrent_fn).__name__}")
    m = max_num_considered_actions
    if isinstance(m, (bool, np.bool_)) or not isinstance(m, numbers.Integral) or int(m) < 1:
        raise ValueError(f"max_num_considered_actions must be an int >= 1, got {m!r}")
    value_scale = _nonnegative_real("value_scale", value_scale)
    maxvisit_init = _nonnegative_real("maxvisit_init", maxvisit_init)
    if q_normalization not in Q_NORMALIZATIONS:
        raise ValueError(f"q_normalization must be one of {list(Q_NORMALIZATIONS)}, got "
                         f"{q_normalization!r}")
    if not math.isfinite((maxvisit_init + config.num_simulations) * value_scale):
        raise ValueError(f"(maxvisit_init + num_simulations) * value_scale must be finite, got "
                         f"({maxvisit_init} + {config.num_simulations}) * {value_scale}")
    batch, num_actions = _root_shape(root_logits)
    logits = _float_array("root_logits", root_logits, (batch, num_actions), "[B, A]")
    values = _float_array("root_values", root_values, (batch,), f"[B={batch}]")
    noise = _float_array("gumbel", gumbel, (batch, num_actions), f"[B={batch}, A={num_actions}]")
    if legal_actions is None:
        mask = np.ones((batch, num_actions), dtype=np.uint8)
    else:
        mask = _legal_mask(legal_actions, (batch, num_actions))
    num_considered = np.minimum(min(int(m), num_actions), mask.sum(axis=1)).astype(np.int32)
    table = _considered_visit_table(int(num_considered.max()) + 1, config.num_simulations)
    counts, root_value, policy, action = _gumbel_search(
        logits, values, recurrent_fn, config.num_simulations, config.discount,
        config.value_prefix, config.lstm_horizon_len, noise, mask, num_considered, table,
        value_scale, maxvisit_init, q_normalization == "tree", config.value_delta_max,
    )
    bad = np.flatnonzero(~np.isfinite(root_value))
    if bad.size:
        raise ValueError(
            f"run_gumbel_mcts: the root value of root(s) {bad.tolist()} is not finite although "
            "every model output was: the values or value prefixes are too large for float32 "
            "backups (check the model and its inputs)"
        )
    return GumbelSearchOutput(action=action, improved_policy=policy, visit_counts=counts,
                              root_values=root_value)


def greedy_actions(visit_counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The greedy action of each root: its most visited action, ties drawn uniformly.

    Args:
        visit_counts: integer [B, A] (e.g. `SearchOutput.visit_counts`), non-negative. Illegal
            actions have 0 visits there, so they can only tie when a whole row is 0 (never
            after a search, whose rows sum to `num_simulations` >= 1).
        rng: the caller's `numpy.random.Generator`. Each call draws exactly once, the array
            `rng.integers(0, n_tied)` (n_tied: int64 [B], the number of actions sharing each
            row's maximum), and returns for row b the `k[b]`-th of its most visited actions in
            ascending order. The same generator state gives the same actions.

    Returns:
        int64 [B], the chosen action of each root.

    Raises:
        ValueError: if `visit_counts` is not a non-negative integer [B, A] array with B, A >= 1,
            or `rng` is not a `numpy.random.Generator`.
    """
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    try:
        counts = np.asarray(visit_counts)
    except Exception as exc:
        raise ValueError(f"visit_counts must be an integer [B, A] array; could not convert "
                         f"{type(visit_counts).__name__}: {exc}") from exc
    if counts.dtype.kind not in "iu" or counts.ndim != 2 or 0 in counts.shape:
        raise ValueError(f"visit_counts must be an integer [B, A] array with B, A >= 1, got "
                         f"dtype {counts.dtype} and shape {counts.shape}")
    if (counts < 0).any():
        raise ValueError("visit_counts must be non-negative")
    is_max = counts == counts.max(axis=1, keepdims=True)
    n_tied = is_max.sum(axis=1)
    k = rng.integers(0, n_tied)                               # one draw per root, in [0, n_tied)
    # Index of the (k + 1)-th True of each row: the first column where the running count of
    # maxima reaches k + 1.
    rank = np.cumsum(is_max, axis=1)
    hit = is_max & (rank == (k + 1)[:, None])
    return hit.argmax(axis=1).astype(np.int64)
