"""Slow, plain-Python reference of the `cython_mcts.run_mcts` contract (docs/design.md section 3.1).

Written for clarity, straight from the contract text, one `Node` object per node. The tests run
it side by side with the compiled search and require identical visit counts.

Reading of the contract made explicit here:

- Simulation s (1-based) is the s-th call of `recurrent_fn`; the node it makes has id s, which is
  also the `parent_ids` value its children will be expanded from. The root has id 0, depth 0.
- Root priors: softmax of the root logits over the legal actions only (illegal: prior 0, never
  selected). With noise, the noise of the legal actions is renormalised to sum to 1 over them,
  then prior = (1 - frac) * prior + frac * noise. Priors below the root: softmax over all actions
  of the logits from `recurrent_fn` (legal masks apply to roots only).
- Rewards: with value_prefix, reward(child) = prefix(child) - prefix(parent), except
  reward(child) = prefix(child) when the parent's depth is a multiple of lstm_horizon_len (the
  root, depth 0, always). Without value_prefix, reward(child) = the first output itself. The
  root's reward is 0.
- Q(child) = reward(child) + discount * value_sum(child) / visit_count(child) for a visited child.
  An unvisited child of x takes m(x): m(root) = mean Q of the root's visited children (0 if none);
  below the root m(x) = (m(parent) + sum of Q of x's visited children) / (1 + their number),
  computed along the path being descended.
- Qn = clip((Q - min) / max(max - min, value_delta_max), 0, 1) when max > min, else clip(Q, 0, 1),
  with the per-root min-max statistics; the same normalisation is applied to m(x).
- score = Qn + prior * pb_c, with (MuZero's pseudocode, in its operation order)
  pb_c = log((N + pb_c_base + 1) / pb_c_base) + pb_c_init; pb_c *= sqrt(N) / (n + 1),
  N = the parent's visit count (counting the visit that expanded it), n = the child's.
  The candidates are all actions (at the root: the legal ones only); those with
  score >= best - 1e-6 are tied, and one of them (ascending action order) is drawn with
  `TieStream.below` from the root's own stream; a single best candidate draws nothing.
- Tie streams (splitmix64, all arithmetic mod 2**64): G = 0x9E3779B97F4A7C15,
  mix(z) = splitmix64's output function; root b starts at state mix(mix(seed + G) + (b + 1) * G);
  next() adds G to the state and returns mix(state); below(n) rejects outputs x < 2**64 mod n
  and returns x % n.
- Root initialisation: visit_count 1, value_sum = root value; the min-max statistics start empty
  (min +inf, max -inf) and never see the root's Q (EfficientZero). `root_in_minmax=True`
  restores the first version's rule (root's Q = discount * value included at the start and on
  every backup), only to compare the two in tests.
- Backup of a leaf value v: for every node on the path from the new leaf up to and including the
  root: value_sum += v; visit_count += 1; for every node but the root, update min-max with
  reward(node) + discount * value_sum / visit_count (the updated value); then
  v = reward(node) + discount * v.
- Output: visit counts of the root's children, root value = value_sum / visit_count of the root.

All arithmetic is done with Python floats (IEEE double) in the operation order written above.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
TIE_TOLERANCE = 1e-6


def mix64(z: int) -> int:
    """splitmix64's output function."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


class TieStream:
    """The tie-breaking stream of root `b` under `seed` (splitmix64)."""

    def __init__(self, seed: int, b: int):
        h = mix64((seed + GOLDEN) & MASK64)
        self.state = mix64((h + (b + 1) * GOLDEN) & MASK64)
        self.draws = 0  # outputs consumed (for tests)

    def next(self) -> int:
        self.state = (self.state + GOLDEN) & MASK64
        self.draws += 1
        return mix64(self.state)

    def below(self, n: int) -> int:
        """Uniform in [0, n), n >= 2, by rejection of the outputs below 2**64 mod n."""
        threshold = (1 << 64) % n
        while True:
            x = self.next()
            if x >= threshold:
                return x % n


class Node:
    """One node of one root's tree."""

    def __init__(self, node_id: int, depth: int, reward: float, prefix: float):
        self.node_id = node_id
        self.depth = depth
        self.reward = reward
        self.prefix = prefix
        self.visit_count = 0
        self.value_sum = 0.0
        self.priors: list[float] = []
        self.children: dict[int, Node] = {}

    def value(self) -> float:
        return self.value_sum / self.visit_count


class MinMax:
    def __init__(self) -> None:
        self.minimum = math.inf
        self.maximum = -math.inf

    def update(self, q: float) -> None:
        self.minimum = min(self.minimum, q)
        self.maximum = max(self.maximum, q)

    def normalize(self, q: float, value_delta_max: float) -> float:
        if self.maximum > self.minimum:
            q = (q - self.minimum) / max(self.maximum - self.minimum, value_delta_max)
        return min(max(q, 0.0), 1.0)


def softmax(logits: list[float]) -> list[float]:
    top = max(logits)
    exps = [math.exp(x - top) for x in logits]
    total = 0.0
    for e in exps:
        total = total + e
    return [e / total for e in exps]


def q_value(child: Node, discount: float) -> float:
    return child.reward + discount * child.value()


class RootSearch:
    """The tree of one root."""

    def __init__(self, logits, value, legal, noise, frac, cfg, stream: TieStream,
                 root_in_minmax: bool = False):
        self.cfg = cfg
        self.stream = stream
        self.root_in_minmax = root_in_minmax
        self.legal = [bool(x) for x in legal]
        self.root = Node(0, 0, 0.0, 0.0)
        legal_ids = [a for a, ok in enumerate(self.legal) if ok]
        probs = softmax([float(logits[a]) for a in legal_ids])
        priors = [0.0] * len(self.legal)
        for a, p in zip(legal_ids, probs, strict=True):
            priors[a] = p
        if noise is not None:
            mass = 0.0
            for a in legal_ids:
                mass = mass + float(noise[a])
            for a in legal_ids:
                priors[a] = (1.0 - frac) * priors[a] + frac * (float(noise[a]) / mass)
        self.root.priors = priors
        self.minmax = MinMax()
        self.root.visit_count = 1
        self.root.value_sum = float(value)
        if root_in_minmax:
            self.minmax.update(self.root.reward + cfg.discount * self.root.value())
        self.path: list[Node] = []
        self.pending_action = -1

    def score(self, parent: Node, action: int, mean_q: float) -> float:
        cfg = self.cfg
        child = parent.children.get(action)
        n = 0 if child is None else child.visit_count
        q = mean_q if child is None else q_value(child, cfg.discount)
        qn = self.minmax.normalize(q, cfg.value_delta_max)
        big_n = parent.visit_count
        pb_c = math.log((big_n + cfg.pb_c_base + 1) / cfg.pb_c_base) + cfg.pb_c_init
        pb_c *= math.sqrt(big_n) / (n + 1)
        return qn + pb_c * parent.priors[action]

    def mean_q(self, node: Node, parent_mean_q: float | None) -> float:
        qs = [q_value(node.children[a], self.cfg.discount) for a in sorted(node.children)]
        total = 0.0
        for q in qs:
            total = total + q
        if parent_mean_q is None:  # the root
            return total / len(qs) if qs else 0.0
        return (parent_mean_q + total) / (1 + len(qs))

    def select(self) -> tuple[int, int, int]:
        """Walks down to an unexpanded edge; returns (parent id, action, depth of the new node)."""
        node = self.root
        path = [node]
        m = self.mean_q(node, None)
        while True:
            actions = range(len(node.priors))
            if node is self.root:
                actions = [a for a in actions if self.legal[a]]
            scores = {a: self.score(node, a, m) for a in actions}
            best_score = max(scores.values())
            tied = [a for a in actions if scores[a] >= best_score - TIE_TOLERANCE]
            best_action = tied[0] if len(tied) == 1 else tied[self.stream.below(len(tied))]
            child = node.children.get(best_action)
            if child is None:
                self.path = path
                self.pending_action = best_action
                return node.node_id, best_action, node.depth + 1
            node = child
            path.append(node)
            m = self.mean_q(node, m)

    def expand_and_backup(self, sim: int, prefix: float, value: float, logits) -> None:
        cfg = self.cfg
        parent = self.path[-1]
        if cfg.value_prefix and parent.depth % cfg.lstm_horizon_len != 0:
            reward = prefix - parent.prefix
        else:
            reward = prefix
        leaf = Node(sim, parent.depth + 1, reward, prefix)
        leaf.priors = softmax([float(x) for x in logits])
        parent.children[self.pending_action] = leaf
        v = value
        for node in reversed([*self.path, leaf]):
            node.value_sum += v
            node.visit_count += 1
            if node is not self.root or self.root_in_minmax:
                self.minmax.update(node.reward + cfg.discount * node.value())
            v = node.reward + cfg.discount * v

    def visit_counts(self) -> list[int]:
        return [self.root.children[a].visit_count if a in self.root.children else 0
                for a in range(len(self.legal))]


def reference_mcts(
    root_logits: np.ndarray,
    root_values: np.ndarray,
    recurrent_fn: Callable,
    cfg,
    noise: np.ndarray | None = None,
    legal_actions: np.ndarray | None = None,
    seed: int | np.ndarray = 0,
    root_in_minmax: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (visit_counts int64 [B, A], root_values float64 [B]). No input validation.

    `root_in_minmax=True` is the first version's min-max rule (for comparisons only).
    """
    root_logits = np.asarray(root_logits, dtype=np.float32)
    root_values = np.asarray(root_values, dtype=np.float32)
    batch, num_actions = root_logits.shape
    if legal_actions is None:
        legal_actions = np.ones((batch, num_actions), dtype=bool)
    frac = cfg.root_exploration_fraction
    trees = [
        RootSearch(root_logits[b], root_values[b], legal_actions[b],
                   None if noise is None else np.asarray(noise, dtype=np.float32)[b], frac, cfg,
                   TieStream(int(np.ravel(seed)[b]) if np.ndim(seed) else seed, b),
                   root_in_minmax)
        for b in range(batch)
    ]
    for sim in range(1, cfg.num_simulations + 1):
        picks = [tree.select() for tree in trees]
        parent_ids = np.array([p[0] for p in picks], dtype=np.int64)
        actions = np.array([p[1] for p in picks], dtype=np.int64)
        depths = np.array([p[2] for p in picks], dtype=np.int64)
        prefix, value, logits = recurrent_fn(parent_ids, actions, depths)
        prefix = np.asarray(prefix, dtype=np.float32)
        value = np.asarray(value, dtype=np.float32)
        logits = np.asarray(logits, dtype=np.float32)
        for b, tree in enumerate(trees):
            tree.expand_and_backup(sim, float(prefix[b]), float(value[b]), logits[b])
    counts = np.array([tree.visit_counts() for tree in trees], dtype=np.int64)
    values = np.array([tree.root.value() for tree in trees], dtype=np.float64)
    return counts, values
