"""Tests of the compiled batched MCTS (`cython_mcts`) against its contract (docs/design.md 3.1).

- randomized comparisons with the plain-Python reference in `tests/mcts_reference.py`;
- small trees worked out by hand (in the comments);
- properties (visit sums, masks, determinism, the ids passed to `recurrent_fn`);
- seeded random tie-breaking and the root-excluded min-max statistics;
- `greedy_actions`;
- every error case.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

import cython_mcts
from cython_mcts import MCTSConfig, SearchOutput, greedy_actions, run_mcts

try:  # tests/ on sys.path (pytest's default rootdir-less import of test modules)
    from mcts_reference import TieStream, mix64, reference_mcts
except ImportError:  # tests/ imported as a package
    from tests.mcts_reference import TieStream, mix64, reference_mcts

# --------------------------------------------------------------------------------------------
# A deterministic fake model: its outputs are a fixed function of (root, path of actions).
# --------------------------------------------------------------------------------------------


class PathModel:
    """Fake `recurrent_fn` whose outputs depend only on (root b, action path from the root).

    It rebuilds each new state's path from `parent_ids`/`actions`, so a wrong parent id or depth
    changes the outputs (and is asserted on directly). Values come from a table indexed by a
    hash of (b, path): "continuous" gives Gaussian floats, "coarse" small integers (many exact
    ties between actions, to exercise tie-breaking).
    """

    def __init__(self, seed: int, batch: int, num_actions: int, mode: str = "continuous",
                 scale: float = 1.0, rows: int = 8192, root_ids: list[int] | None = None):
        rng = np.random.default_rng(seed)
        # Which tree each batch row plays (to run one root alone with the outputs it had in a
        # batch).
        self.root_ids = list(range(batch)) if root_ids is None else root_ids
        self.batch, self.num_actions = batch, num_actions
        if mode == "continuous":
            self.table = rng.standard_normal((rows, 2 + num_actions)) * scale
        elif mode == "positive":  # rewards and values all > 0: the root's own Q is often a bound
            self.table = (rng.random((rows, 2 + num_actions)) + 0.5) * scale
        else:
            self.table = rng.integers(-1, 2, size=(rows, 2 + num_actions)) * scale
        self.table = self.table.astype(np.float32)
        self.rows = rows
        self.paths: list[dict[int, tuple[int, ...]]] = [{0: ()} for _ in range(batch)]
        self.calls = 0
        self.log: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def outputs_for(self, b: int, path: tuple[int, ...]) -> np.ndarray:
        return self.table[hash((self.root_ids[b], path)) % self.rows]

    def __call__(self, parent_ids, actions, depths):
        self.calls += 1
        sim = self.calls
        assert parent_ids.dtype == np.int64 and actions.dtype == np.int64
        assert depths.dtype == np.int64
        assert parent_ids.shape == actions.shape == depths.shape == (self.batch,)
        self.log.append((parent_ids, actions, depths))
        out = np.empty((self.batch, 2 + self.num_actions), dtype=np.float32)
        for b in range(self.batch):
            parent = int(parent_ids[b])
            assert 0 <= parent < sim, (parent, sim)
            assert 0 <= int(actions[b]) < self.num_actions
            path = self.paths[b][parent] + (int(actions[b]),)
            assert len(path) == int(depths[b]), (path, depths[b])
            self.paths[b][sim] = path
            out[b] = self.outputs_for(b, path)
        return out[:, 0].copy(), out[:, 1].copy(), out[:, 2:].copy()


def make_case(seed: int, batch: int, num_actions: int, masked: bool, noisy: bool):
    rng = np.random.default_rng(10_000 + seed)
    logits = rng.standard_normal((batch, num_actions)).astype(np.float32)
    values = rng.standard_normal(batch).astype(np.float32)
    legal = None
    if masked:
        legal = rng.random((batch, num_actions)) < 0.6
        legal[np.arange(batch), rng.integers(0, num_actions, batch)] = True
    noise = None
    if noisy:
        noise = rng.dirichlet(np.full(num_actions, 0.3), size=batch).astype(np.float32)
        if legal is not None:  # make sure every row has some mass on a legal action
            noise = np.where(legal, noise + 1e-3, noise).astype(np.float32)
    return logits, values, legal, noise


def compare(logits, values, legal, noise, cfg, seed, mode, scale=1.0, search_seed=0):
    """Runs the compiled search and the reference (tie seed `search_seed`); asserts they agree."""
    batch, num_actions = logits.shape
    model = PathModel(seed, batch, num_actions, mode, scale)
    out = run_mcts(logits, values, model, cfg, noise=noise, legal_actions=legal,
                   seed=search_seed)
    ref_model = PathModel(seed, batch, num_actions, mode, scale)
    ref_counts, ref_values = reference_mcts(logits, values, ref_model, cfg, noise=noise,
                                            legal_actions=legal, seed=search_seed)
    assert model.calls == ref_model.calls == cfg.num_simulations
    np.testing.assert_array_equal(out.visit_counts, ref_counts)
    np.testing.assert_allclose(out.root_values, ref_values, rtol=1e-5, atol=1e-5)
    # Same calls, in the same order, with the same ids.
    for (p, a, d), (rp, ra, rd) in zip(model.log, ref_model.log, strict=True):
        np.testing.assert_array_equal(p, rp)
        np.testing.assert_array_equal(a, ra)
        np.testing.assert_array_equal(d, rd)
    return out


# --------------------------------------------------------------------------------------------
# Randomized comparisons with the reference.
# --------------------------------------------------------------------------------------------

_GRID = list(enumerate(itertools.product(
    [2, 4, 18],            # num_actions
    [True, False],         # value_prefix
    [False, True],         # masked
    [False, True],         # noisy
    ["continuous", "coarse", "positive"],
    range(5),              # seed
)))


@pytest.mark.parametrize("case_seed,params", _GRID,
                         ids=[f"A{p[0]}-vp{int(p[1])}-mask{int(p[2])}-noise{int(p[3])}-{p[4]}-{p[5]}"
                              for _, p in _GRID])
def test_matches_reference(case_seed, params):
    num_actions, value_prefix, masked, noisy, mode, _ = params
    rng = np.random.default_rng(case_seed)
    batch = int(rng.choice([1, 2, 5, 16]))
    cfg = MCTSConfig(
        num_simulations=int(rng.choice([1, 2, 3, 11, 30, 50])),
        discount=float(rng.choice([0.997**4, 1.0, 0.5])),
        pb_c_base=float(rng.choice([19652.0, 5.0])),
        pb_c_init=float(rng.choice([1.25, 0.5])),
        root_exploration_fraction=float(rng.choice([0.25, 1.0])),
        value_prefix=value_prefix,
        lstm_horizon_len=int(rng.choice([1, 2, 3, 5])),
        value_delta_max=float(rng.choice([0.01, 0.0, 1.0])),
    )
    scale = float(rng.choice([1.0, 1e-3, 100.0]))
    search_seed = [0, 1, 2**64 - 1, 2**63, int(rng.integers(2**63))][case_seed % 5]
    logits, values, legal, noise = make_case(case_seed, batch, num_actions, masked, noisy)
    out = compare(logits, values * scale, legal, noise, cfg, case_seed, mode, scale,
                  search_seed=search_seed)
    assert (out.visit_counts.sum(axis=1) == cfg.num_simulations).all()
    if legal is not None:
        assert (out.visit_counts[~legal] == 0).all()


@pytest.mark.parametrize("horizon", [1, 2, 3, 5, 7])
def test_matches_reference_deep_trees(horizon):
    # One action per root (plus a masked-out one): every simulation extends a chain, so the
    # value-prefix resets at every multiple of the horizon are all exercised.
    cfg = MCTSConfig(num_simulations=20, lstm_horizon_len=horizon, value_prefix=True)
    logits, values, _, _ = make_case(horizon, 3, 2, False, False)
    legal = np.array([[True, False], [False, True], [True, True]])
    compare(logits, values, legal, None, cfg, seed=horizon, mode="continuous",
            search_seed=horizon)


@pytest.mark.parametrize("mode", ["continuous", "coarse"])
def test_matches_reference_many_simulations(mode):
    cfg = MCTSConfig(num_simulations=200)
    logits, values, legal, noise = make_case(7, 4, 4, True, True)
    compare(logits, values, legal, noise, cfg, seed=7, mode=mode, search_seed=77)


def test_matches_reference_atari_setting():
    # EfficientZero's Atari search: 64 roots, 4 actions, 50 simulations, noise, value prefix.
    cfg = MCTSConfig()
    logits, values, _, noise = make_case(8, 64, 4, False, True)
    compare(logits, values, None, noise, cfg, seed=8, mode="continuous", search_seed=8)


def test_roots_are_independent():
    # A root searched inside a batch gets exactly what it gets when searched alone (no state
    # leaks between batch elements). Continuous inputs have no tied scores, so the tie streams
    # (which depend on the root's index in the batch) are never drawn from here.
    batch, num_actions = 6, 4
    logits, values, legal, noise = make_case(9, batch, num_actions, True, True)
    cfg = MCTSConfig(num_simulations=30, lstm_horizon_len=3)
    together = run_mcts(logits, values, PathModel(9, batch, num_actions), cfg, noise, legal)
    for b in range(batch):
        alone = run_mcts(logits[b:b + 1], values[b:b + 1],
                         PathModel(9, 1, num_actions, root_ids=[b]), cfg,
                         noise[b:b + 1], legal[b:b + 1])
        np.testing.assert_array_equal(alone.visit_counts[0], together.visit_counts[b])
        assert alone.root_values[0] == together.root_values[b]


# --------------------------------------------------------------------------------------------
# Hand-worked trees.
# --------------------------------------------------------------------------------------------


class TableModel:
    """B = 1 fake model: (parent_id, action) -> (first output, value, logits); logs its calls."""

    def __init__(self, table):
        self.table = table
        self.calls: list[tuple[int, int, int]] = []

    def __call__(self, parent_ids, actions, depths):
        key = (int(parent_ids[0]), int(actions[0]))
        self.calls.append((*key, int(depths[0])))
        first, value, logits = self.table[key]
        return (np.array([first], np.float32), np.array([value], np.float32),
                np.array([logits], np.float32))


PB_C = [None] + [math.log((n + 19652 + 1) / 19652) + 1.25 for n in range(1, 6)]
# The hand trees below test arithmetic, not ties: logits TILT = [0.001, 0] give priors
# 0.50025 / 0.49975, which separate otherwise equal scores by > 1e-4 (far beyond the 1e-6 tie
# tolerance) without changing any other decision worked out in the comments.
TILT = [1e-3, 0.0]


def test_hand_tree_selection_and_backup():
    # MuZero mode, A = 2, discount 0.5, root logits TILT (priors ~1/2, 1/2), root value 0.
    # Root start: N = 1, value_sum = 0, min-max empty.
    # sim 1: no child visited, m(root) = 0, Qn = clip(0) = 0 for both; the prior term favours
    #   a0 (TILT). Node 1 = (0, a0), depth 1: reward 1, value 0.
    #   backup: node1 sum 0, n 1, q = 1 + 0.5 * 0 = 1 -> min-max [1, 1]; v = 1 + 0 = 1;
    #   root sum 1, n 2 (the root's Q is not in the statistics).
    # sim 2: N = 2. a0: Q = 1 -> Qn = clip(1) = 1 (max == min); a1 unvisited: m(root) = 1 -> 1.
    #   pb_c(2) ~ 1.25015: a0 1 + 1.25015 * sqrt(2) / 2 * 0.5 = 1.442; a1 1 + 1.25015 * sqrt(2)
    #   * 0.5 = 1.884 -> a1. Node 2 = (0, a1): reward 0, value -1 -> q = -0.5, min-max
    #   [-0.5, 1]; v = -0.5; root sum 0.5, n 3.
    # sim 3: N = 3. a0: Qn = (1 + 0.5) / 1.5 = 1; a1: Q = -0.5 -> Qn 0. Equal prior terms
    #   (both n = 1) -> a0, descend into node 1 (N = 1, no visited child):
    #   m(node1) = (m(root) + 0) / 1 = (1 - 0.5) / 2 = 0.25; its logits TILT -> a0.
    #   Node 3 = (1, a0), depth 2: reward 0.5, value 2: q = 0.5 + 1 = 1.5; v = 1.5;
    #   node1: sum 1.5, n 2; v = 1 + 0.5 * 1.5 = 1.75; root sum 2.25, n 4.
    # Visits [2, 1]; root value 2.25 / 4 = 0.5625.
    model = TableModel({
        (0, 0): (1.0, 0.0, TILT),
        (0, 1): (0.0, -1.0, TILT),
        (1, 0): (0.5, 2.0, TILT),
    })
    cfg = MCTSConfig(num_simulations=3, discount=0.5, value_prefix=False)
    out = run_mcts(np.array([TILT], np.float32), np.zeros(1, np.float32), model, cfg)
    assert model.calls == [(0, 0, 1), (0, 1, 1), (1, 0, 2)]
    np.testing.assert_array_equal(out.visit_counts, [[2, 1]])
    np.testing.assert_allclose(out.root_values, [0.5625], rtol=1e-6)
    np.testing.assert_allclose(out.search_policy, [[2 / 3, 1 / 3]], rtol=1e-6)


def test_hand_tree_mean_q_for_unvisited_children():
    # MuZero mode, discount 1, root logits [2, 0]: priors p0 = e^2 / (e^2 + 1) = 0.881,
    # p1 = 0.119; root value 0; min-max empty.
    # sim 1: Qn = clip(m = 0) = 0 for both -> a0 (larger prior). Node 1: reward 0, value -1
    #   -> q = -1, min-max [-1, -1]; root sum -1, N 2.
    # sim 2: N = 2. a0: Q = -1 -> Qn = clip(-1) = 0; a1 unvisited: m(root) = -1 -> 0.
    #   a0: pb_c * sqrt(2) / 2 * 0.881 = 0.623 pb_c, a1: pb_c * sqrt(2) * 0.119 = 0.168 pb_c
    #   -> a0. Descend to node 1 (N = 1): m(node1) = (m(root) + 0) / 1 = -1; logits TILT -> a0.
    #   Node 2 = (1, a0), depth 2: reward 0, value -3 -> q = -3, min-max [-3, -1]; v = -3:
    #   node1 sum -4, n 2 (q = -2); root sum -4, N 3.
    # sim 3: N = 3, pb_c(3) = 1.2502. a0: Q = -2 -> Qn = (-2 + 3) / 2 = 0.5; a1 takes
    #   m(root) = mean Q of the visited children = -2 -> Qn 0.5. Scores: a0 0.5 + 1.2502 *
    #   sqrt(3) / 3 * 0.881 = 1.136, a1 0.5 + 1.2502 * sqrt(3) * 0.119 = 0.758 -> a0. (Had an
    #   unvisited child counted as Q = 0, its Qn would be clip(1.5) = 1, a1 would score 1.258
    #   and win.) Descend to node 1 (N = 2): its visited child a0 has Q = -3 -> Qn 0;
    #   m(node1) = (m(root) + (-3)) / (1 + 1) = -2.5 -> Qn 0.25. a0: 0 + pb_c(2) * sqrt(2) / 2
    #   * 0.50025 = 0.442; a1: 0.25 + pb_c(2) * sqrt(2) * 0.49975 = 1.134 -> a1.
    #   Node 3 = (1, a1), depth 2: reward 0, value 1 -> v = 1: node1 sum -3, n 3; root sum -3,
    #   N 4.
    # Visits [3, 0]; root value -3 / 4 = -0.75.
    model = TableModel({
        (0, 0): (0.0, -1.0, TILT),
        (1, 0): (0.0, -3.0, TILT),
        (1, 1): (0.0, 1.0, TILT),
    })
    cfg = MCTSConfig(num_simulations=3, discount=1.0, value_prefix=False)
    out = run_mcts(np.array([[2.0, 0.0]], np.float32), np.zeros(1, np.float32), model, cfg)
    assert model.calls == [(0, 0, 1), (1, 0, 2), (1, 1, 2)]
    np.testing.assert_array_equal(out.visit_counts, [[3, 0]])
    np.testing.assert_allclose(out.root_values, [-0.75], rtol=1e-6)


def test_hand_tree_root_stays_out_of_min_max():
    # The root's own Q (0 + discount * root value) never enters the min-max statistics
    # (EfficientZero); they start empty. MuZero mode, discount 0.5, root value 2, logits TILT.
    # Start: root N 1, sum 2, min-max empty.
    # sim 1: all Qn = clip(m = 0) = 0 -> a0 (prior). Node 1 = (0, a0): reward 0.5, value 1:
    #   q = 0.5 + 0.5 = 1 -> [1, 1]; v = 1; root sum 3, N 2.
    # sim 2: a0 Qn = clip(1) = 1 (max == min), a1 unvisited m(root) = 1 -> Qn 1; a1 has the
    #   larger exploration term (n = 0) -> a1. Node 2 = (0, a1): reward 0, value 2: q = 1
    #   -> [1, 1]; v = 1; root sum 4, N 3.
    # sim 3: a0 and a1 both Q = 1 (Qn 1), both n = 1 -> a0 (prior); node 1 (N 1) has no visited
    #   child -> a0 (prior). Node 3 = (1, a0), depth 2: reward 2, value 0: q = 2 -> [1, 2];
    #   v = 2; node 1 sum 3, n 2, q = 0.5 + 0.5 * 1.5 = 1.25; v = 0.5 + 0.5 * 2 = 1.5;
    #   root sum 5.5, N 4.
    # sim 4: N = 4, pb_c(4) = 1.25025. a0: Qn = (1.25 - 1) / 1 = 0.25, U = 1.25025 * 2 / 3 *
    #   0.50025 = 0.417 -> 0.667. a1: Qn = (1 - 1) / 1 = 0, U = 1.25025 * 2 / 2 * 0.49975 = 0.625
    #   -> a0. (The first version also put the root's Q in: 1, 0.75, 0.667, 0.6875 -> min-max
    #   [0.667, 2], Qn 0.4375 and 0.25, and a1 won: visits [2, 2], checked below with the
    #   reference's old rule.) Descend to node 1 (N 2): its child a0 has Q = 2 -> Qn 1;
    #   m(node1) = (m(root) + 2) / 2 with m(root) = (1.25 + 1) / 2 = 1.125 -> 1.5625, Qn 0.5625.
    #   a0: 1 + pb_c(2) * sqrt(2) / 2 * 0.50025 = 1.4422; a1: 0.5625 + pb_c(2) * sqrt(2) *
    #   0.49975 = 1.4461 -> a1. Node 4 = (1, a1), depth 2: reward 0, value 3: v = 3 -> node 4
    #   -> 0 + 0.5 * 3 = 1.5 -> node 1 (sum 4.5, n 3) -> 0.5 + 0.5 * 1.5 = 1.25 -> root sum
    #   6.75, N 5.
    # Visits [3, 1]; root value 6.75 / 5 = 1.35.
    table = {
        (0, 0): (0.5, 1.0, TILT),
        (0, 1): (0.0, 2.0, TILT),
        (1, 0): (2.0, 0.0, TILT),
        (1, 1): (0.0, 3.0, TILT),
        (2, 0): (0.0, 3.0, TILT),  # only reached under the old rule
    }
    cfg = MCTSConfig(num_simulations=4, discount=0.5, value_prefix=False)
    logits, root_value = np.array([TILT], np.float32), np.full(1, 2.0, np.float32)
    model = TableModel(table)
    out = run_mcts(logits, root_value, model, cfg)
    assert model.calls == [(0, 0, 1), (0, 1, 1), (1, 0, 2), (1, 1, 2)]
    np.testing.assert_array_equal(out.visit_counts, [[3, 1]])
    np.testing.assert_allclose(out.root_values, [1.35], rtol=1e-6)
    old_model = TableModel(table)
    old_counts, old_values = reference_mcts(logits, root_value, old_model, cfg,
                                            root_in_minmax=True)
    assert old_model.calls == [(0, 0, 1), (0, 1, 1), (1, 0, 2), (2, 0, 2)]
    np.testing.assert_array_equal(old_counts, [[2, 2]])
    np.testing.assert_allclose(old_values, [1.25], rtol=1e-12)


@pytest.mark.parametrize("value_prefix", [True, False])
def test_hand_tree_value_prefix_reset_at_horizon(value_prefix):
    # One action, so the tree is a chain: node s has depth s and parent s - 1.
    # lstm_horizon_len = 2, discount 0.5, root value 0, first outputs p = 1, 3, 0.5, 2.5 and
    # values 0, 0, 0, 4 for nodes 1..4.
    # value_prefix=True: node 1 (parent depth 0, reset): r1 = 1; node 2 (parent depth 1):
    #   r2 = 3 - 1 = 2; node 3 (parent depth 2, reset): r3 = 0.5; node 4: r4 = 2.5 - 0.5 = 2.
    #   Values reaching the root: sim 1: r1 + 0.5 * 0 = 1; sim 2: node 1 gets r2 + 0 = 2, root
    #   1 + 0.5 * 2 = 2; sim 3: 0.5 -> 2 + 0.25 = 2.25 -> 1 + 1.125 = 2.125; sim 4: 2 + 0.5 * 4
    #   = 4 -> 0.5 + 2 = 2.5 -> 2 + 1.25 = 3.25 -> 1 + 1.625 = 2.625.
    #   Root value (0 + 1 + 2 + 2.125 + 2.625) / 5 = 1.55.
    # value_prefix=False: rewards 1, 3, 0.5, 2.5. Root receives 1; 1 + 0.5 * 3 = 2.5;
    #   3 + 0.25 = 3.25 -> 1 + 1.625 = 2.625; 2.5 + 2 = 4.5 -> 0.5 + 2.25 = 2.75 -> 3 + 1.375
    #   = 4.375 -> 1 + 2.1875 = 3.1875. Root value (1 + 2.5 + 2.625 + 3.1875) / 5 = 1.8625.
    model = TableModel({
        (0, 0): (1.0, 0.0, [0.0]),
        (1, 0): (3.0, 0.0, [0.0]),
        (2, 0): (0.5, 0.0, [0.0]),
        (3, 0): (2.5, 4.0, [0.0]),
    })
    cfg = MCTSConfig(num_simulations=4, discount=0.5, value_prefix=value_prefix,
                     lstm_horizon_len=2)
    out = run_mcts(np.zeros((1, 1), np.float32), np.zeros(1, np.float32), model, cfg)
    assert model.calls == [(0, 0, 1), (1, 0, 2), (2, 0, 3), (3, 0, 4)]
    np.testing.assert_array_equal(out.visit_counts, [[4]])
    np.testing.assert_allclose(out.root_values, [1.55 if value_prefix else 1.8625], rtol=1e-6)


def test_hand_noise_is_renormalised_over_legal_actions():
    # Legal [T, T, F]; softmax over the legal logits gives p = [0.65, 0.35]. Noise [0, 0.2, 0.8]
    # renormalised over the legal actions is [0, 1]; with fraction 0.5 the priors are
    # [0.325, 0.675] -> the single simulation takes action 1. (Without renormalisation they
    # would be [0.325, 0.275] and action 0 would win.)
    logits = np.array([[math.log(0.65), math.log(0.35), 10.0]], np.float32)
    noise = np.array([[0.0, 0.2, 0.8]], np.float32)
    legal = np.array([[True, True, False]])
    model = TableModel({(0, 1): (0.0, 0.0, [0.0, 0.0, 0.0])})
    cfg = MCTSConfig(num_simulations=1, root_exploration_fraction=0.5)
    out = run_mcts(logits, np.zeros(1, np.float32), model, cfg, noise=noise, legal_actions=legal)
    np.testing.assert_array_equal(out.visit_counts, [[0, 1, 0]])
    # Without noise the legal softmax decides: action 0 (the illegal logit 10 is ignored).
    model = TableModel({(0, 0): (0.0, 0.0, [0.0, 0.0, 0.0])})
    out = run_mcts(logits, np.zeros(1, np.float32), model, cfg, legal_actions=legal)
    np.testing.assert_array_equal(out.visit_counts, [[1, 0, 0]])


def test_root_value_output_formula():
    # root_values = (root value + every value backed up to the root) / (simulations + 1).
    # Single action, value_prefix=False, discount 1, rewards 0: each simulation backs up its
    # leaf value unchanged: (2 + 1 + 1 + 1) / 4 = 1.25.
    def fn(parent_ids, actions, depths):
        return np.zeros(1, np.float32), np.ones(1, np.float32), np.zeros((1, 1), np.float32)

    cfg = MCTSConfig(num_simulations=3, discount=1.0, value_prefix=False)
    out = run_mcts(np.zeros((1, 1), np.float32), np.full(1, 2.0, np.float32), fn, cfg)
    np.testing.assert_allclose(out.root_values, [1.25])


# --------------------------------------------------------------------------------------------
# Properties.
# --------------------------------------------------------------------------------------------


def test_config_defaults_match_contract():
    cfg = MCTSConfig()
    assert (cfg.num_simulations, cfg.discount, cfg.pb_c_base, cfg.pb_c_init) == (
        50, 0.997**4, 19652, 1.25)
    assert (cfg.root_exploration_fraction, cfg.value_prefix, cfg.lstm_horizon_len,
            cfg.value_delta_max) == (0.25, True, 5, 0.01)
    with pytest.raises(AttributeError):
        cfg.num_simulations = 3  # frozen


@pytest.mark.parametrize("batch,num_actions", [(1, 4), (7, 18), (32, 2)])
def test_visit_sums_masks_and_determinism(batch, num_actions):
    logits, values, legal, noise = make_case(batch, batch, num_actions, True, True)
    cfg = MCTSConfig(num_simulations=40)
    out1 = run_mcts(logits, values, PathModel(1, batch, num_actions), cfg, noise, legal, seed=123)
    out2 = run_mcts(logits, values, PathModel(1, batch, num_actions), cfg, noise, legal, seed=123)
    assert isinstance(out1, SearchOutput)
    assert out1.visit_counts.shape == (batch, num_actions)
    assert out1.visit_counts.dtype in (np.int32, np.int64)
    assert out1.root_values.shape == (batch,) and out1.root_values.dtype == np.float32
    assert (out1.visit_counts.sum(axis=1) == 40).all()
    assert (out1.visit_counts[~legal] == 0).all()
    np.testing.assert_array_equal(out1.visit_counts, out2.visit_counts)
    np.testing.assert_array_equal(out1.root_values, out2.root_values)
    policy = out1.search_policy
    assert policy.dtype == np.float32
    np.testing.assert_allclose(policy.sum(axis=1), 1.0, rtol=1e-6)


def test_single_legal_action_gets_every_visit():
    batch, num_actions = 5, 6
    logits, values, _, noise = make_case(3, batch, num_actions, False, True)
    legal = np.zeros((batch, num_actions), bool)
    only = np.array([0, 5, 2, 3, 1])
    legal[np.arange(batch), only] = True
    out = run_mcts(logits, values, PathModel(3, batch, num_actions), MCTSConfig(), noise, legal)
    expected = np.zeros((batch, num_actions), int)
    expected[np.arange(batch), only] = 50
    np.testing.assert_array_equal(out.visit_counts, expected)


def test_ids_and_depths_passed_to_recurrent_fn():
    batch, num_actions, sims = 6, 3, 30
    logits, values, _, _ = make_case(5, batch, num_actions, False, False)
    model = PathModel(5, batch, num_actions)  # asserts parent < sim and depth == len(path)
    run_mcts(logits, values, model, MCTSConfig(num_simulations=sims))
    assert model.calls == sims
    depth_of = np.zeros((batch, sims + 1), np.int64)
    for sim, (parents, actions, depths) in enumerate(model.log, start=1):
        # The callback kept its arguments: they must not have been reused by later calls.
        assert (parents < sim).all() and (parents >= 0).all()
        np.testing.assert_array_equal(depths, depth_of[np.arange(batch), parents] + 1)
        depth_of[:, sim] = depths
        assert ((actions >= 0) & (actions < num_actions)).all()
    # The first call always expands from the roots.
    np.testing.assert_array_equal(model.log[0][0], 0)
    np.testing.assert_array_equal(model.log[0][2], 1)


def test_accepts_other_float_dtypes_and_noncontiguous_outputs():
    batch, num_actions = 4, 4
    logits, values, legal, noise = make_case(11, batch, num_actions, True, True)
    cfg = MCTSConfig(num_simulations=25)
    base = run_mcts(logits, values, PathModel(2, batch, num_actions), cfg, noise, legal)
    inner = PathModel(2, batch, num_actions)

    def loose_fn(parent_ids, actions, depths):
        vp, v, lg = inner(parent_ids, actions, depths)
        host = np.concatenate([vp[:, None], v[:, None], lg], axis=1)  # as a device copy would
        return host[:, 0], host[:, 1].astype(np.float64), np.asfortranarray(host[:, 2:])

    out = run_mcts(logits.astype(np.float64), values.astype(np.float64), loose_fn, cfg,
                   noise.astype(np.float64), legal.astype(np.int8))
    np.testing.assert_array_equal(out.visit_counts, base.visit_counts)
    np.testing.assert_array_equal(out.root_values, base.root_values)


def test_inputs_are_not_modified():
    logits, values, legal, noise = make_case(4, 3, 4, True, True)
    copies = [x.copy() for x in (logits, values, legal, noise)]
    run_mcts(logits, values, PathModel(4, 3, 4), MCTSConfig(num_simulations=10), noise, legal)
    for original, copy in zip((logits, values, legal, noise), copies, strict=True):
        np.testing.assert_array_equal(original, copy)


# --------------------------------------------------------------------------------------------
# Seeded random tie-breaking.
# --------------------------------------------------------------------------------------------


def flat_fn(num_actions):
    """A flat model: zero rewards, zero values, equal logits (every choice is a tie)."""
    def fn(parent_ids, actions, depths):
        n = len(parent_ids)
        return (np.zeros(n, np.float32), np.zeros(n, np.float32),
                np.zeros((n, num_actions), np.float32))
    return fn


class LoggingFn:
    """Wraps a recurrent_fn and keeps the (parent_ids, actions, depths) of every call."""

    def __init__(self, fn):
        self.fn = fn
        self.log: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def __call__(self, parent_ids, actions, depths):
        self.log.append((parent_ids, actions, depths))
        return self.fn(parent_ids, actions, depths)

    def actions(self) -> np.ndarray:
        """int64 [B, simulations]: the action expanded by each simulation, per root."""
        return np.stack([a for _, a, _ in self.log], axis=1)


def test_tie_stream_spec():
    # The generator as specified in the docstrings, written out once more by hand: splitmix64
    # seeded from (seed, b). Known splitmix64 outputs: seeded with 0, the first output is
    # 0xE220A8397B1DCDAF.
    assert mix64((0 + 0x9E3779B97F4A7C15) % 2**64) == 0xE220A8397B1DCDAF
    stream = TieStream(5, 3)
    h = mix64((5 + 0x9E3779B97F4A7C15) % 2**64)
    state = mix64((h + 4 * 0x9E3779B97F4A7C15) % 2**64)
    for _ in range(3):
        state = (state + 0x9E3779B97F4A7C15) % 2**64
        assert stream.next() == mix64(state)
    # below(n): uniform on [0, n), one output per draw unless it falls under 2**64 mod n
    # (probability n / 2**64: never, in practice).
    stream = TieStream(9, 1)
    counts = np.bincount([stream.below(3) for _ in range(3000)], minlength=3)
    assert stream.draws == 3000
    assert (np.abs(counts - 1000) < 120).all(), counts


@pytest.mark.parametrize("num_actions", [2, 5])
def test_flat_tree_ties_spread_over_all_actions(num_actions):
    # All scores equal: the first simulation's action is drawn uniformly from all actions by
    # root 0's stream, so over many seeds every action is chosen about equally often.
    cfg = MCTSConfig(num_simulations=1)
    logits, values = np.zeros((1, num_actions), np.float32), np.zeros(1, np.float32)
    first = []
    for seed in range(400):
        out = run_mcts(logits, values, flat_fn(num_actions), cfg, seed=seed)
        assert out.visit_counts.sum() == 1
        first.append(int(out.visit_counts[0].argmax()))
        stream = TieStream(seed, 0)
        assert first[-1] == stream.below(num_actions)  # the spec, by hand
    counts = np.bincount(first, minlength=num_actions)
    expected = 400 / num_actions
    assert (counts > 0).all(), counts
    assert (np.abs(counts - expected) < 0.35 * expected).all(), counts


def test_flat_tree_same_seed_repeats_and_matches_reference():
    # Deeper flat trees: many tie draws per simulation (at the root and below). Same seed, same
    # visit counts and the same sequence of expansions; the reference agrees; other seeds give
    # other sequences.
    num_actions, sims = 4, 30
    cfg = MCTSConfig(num_simulations=sims)
    logits, values = np.zeros((3, num_actions), np.float32), np.zeros(3, np.float32)
    sequences = set()
    for seed in [0, 1, 12345, 2**64 - 1]:
        runs = []
        for _ in range(2):
            fn = LoggingFn(flat_fn(num_actions))
            out = run_mcts(logits, values, fn, cfg, seed=seed)
            runs.append((out, fn))
        (out1, fn1), (out2, fn2) = runs
        np.testing.assert_array_equal(out1.visit_counts, out2.visit_counts)
        np.testing.assert_array_equal(out1.root_values, out2.root_values)
        for (p1, a1, d1), (p2, a2, d2) in zip(fn1.log, fn2.log, strict=True):
            np.testing.assert_array_equal(p1, p2)
            np.testing.assert_array_equal(a1, a2)
            np.testing.assert_array_equal(d1, d2)
        ref_fn = LoggingFn(flat_fn(num_actions))
        ref_counts, _ = reference_mcts(logits, values, ref_fn, cfg, seed=seed)
        np.testing.assert_array_equal(out1.visit_counts, ref_counts)
        for (p1, a1, d1), (rp, ra, rd) in zip(fn1.log, ref_fn.log, strict=True):
            np.testing.assert_array_equal(p1, rp)
            np.testing.assert_array_equal(a1, ra)
            np.testing.assert_array_equal(d1, rd)
        sequences.add(fn1.actions()[0].tobytes())
    assert len(sequences) == 4


def test_identical_roots_in_a_batch_get_different_streams():
    # 64 identical flat roots, one seed: each root draws from its own stream, so their tie
    # choices differ (and match the reference root by root).
    batch, num_actions, sims = 64, 4, 6
    cfg = MCTSConfig(num_simulations=sims)
    logits, values = np.zeros((batch, num_actions), np.float32), np.zeros(batch, np.float32)
    fn = LoggingFn(flat_fn(num_actions))
    run_mcts(logits, values, fn, cfg, seed=7)
    actions = fn.actions()
    assert set(actions[:, 0].tolist()) == set(range(num_actions))
    assert len({row.tobytes() for row in actions}) > batch // 2
    for b in range(batch):  # root b's first pick is its own stream's first draw
        assert actions[b, 0] == TieStream(7, b).below(num_actions)
    ref_fn = LoggingFn(flat_fn(num_actions))
    reference_mcts(logits, values, ref_fn, cfg, seed=7)
    np.testing.assert_array_equal(actions, ref_fn.actions())


def test_only_legal_actions_can_tie():
    # pb_c_init 0 and a huge pb_c_base make every exploration term < 1e-6, so in a flat tree
    # every child's score is within the tolerance of the best, illegal root actions included
    # if they were candidates. They are not: the draws spread over the legal actions only.
    cfg = MCTSConfig(num_simulations=1, pb_c_init=0.0, pb_c_base=1e12)
    legal = np.array([[True, False, True, False, True]])
    logits, values = np.zeros((1, 5), np.float32), np.zeros(1, np.float32)
    chosen = set()
    for seed in range(60):
        out = run_mcts(logits, values, flat_fn(5), cfg, legal_actions=legal, seed=seed)
        action = int(out.visit_counts[0].argmax())
        assert action == [0, 2, 4][TieStream(seed, 0).below(3)]
        chosen.add(action)
    assert chosen == {0, 2, 4}


def test_tie_tolerance():
    # One simulation from a 2-action root with value 0: score(a) = pb_c(1) * prior(a), so a
    # logit gap x separates the scores by about pb_c(1) * x / 4 = 0.31 x. x = 1e-5 (3e-6 apart):
    # no tie, always a0; x = 1e-6 (3e-7 apart): tied, both actions come up over the seeds.
    cfg = MCTSConfig(num_simulations=1)
    values = np.zeros(1, np.float32)
    for gap, expected in [(1e-5, {0}), (1e-6, {0, 1}), (0.0, {0, 1})]:
        logits = np.array([[gap, 0.0]], np.float32)
        chosen = {int(run_mcts(logits, values, flat_fn(2), cfg, seed=s).visit_counts[0].argmax())
                  for s in range(40)}
        assert chosen == expected, gap


# --------------------------------------------------------------------------------------------
# Min-max statistics without the root.
# --------------------------------------------------------------------------------------------


class FirstActionValueModel:
    """CartPole-like toy: reward 1 every step, value 9.9 below root action 0, 10.0 below 1."""

    def __init__(self, batch: int = 1):
        self.first: list[dict[int, int | None]] = [{0: None} for _ in range(batch)]
        self.calls = 0

    def __call__(self, parent_ids, actions, depths):
        self.calls += 1
        batch = len(parent_ids)
        values = np.empty(batch, np.float32)
        for b in range(batch):
            first = self.first[b][int(parent_ids[b])]
            first = int(actions[b]) if first is None else first
            self.first[b][self.calls] = first
            values[b] = 9.9 if first == 0 else 10.0
        return np.ones(batch, np.float32), values, np.zeros((batch, 2), np.float32)


@pytest.mark.parametrize("root_value", [10.0, 0.0])
def test_root_out_of_min_max_widens_the_gap(root_value):
    # Dense rewards: Q = 1 + discount * ~10 for every child, so Q differences are ~0.1. The old
    # rule also put the root's discount * value into the statistics; with a root value far from
    # the children's Q that range swamps the 0.1 difference (root value 0: a flat [8, 8]). With
    # the root left out the statistics span just the children's Q and the search finds the
    # better action: visits [2, 14] for every seed (the first version: [3, 13] at root value 10).
    cfg = MCTSConfig(num_simulations=16, value_prefix=False)
    logits = np.zeros((1, 2), np.float32)
    values = np.full(1, root_value, np.float32)
    old_expected = [[3, 13]] if root_value == 10.0 else [[8, 8]]
    for seed in [0, 1, 2, 3, 2**64 - 1]:
        out = run_mcts(logits, values, FirstActionValueModel(), cfg, seed=seed)
        ref, _ = reference_mcts(logits, values, FirstActionValueModel(), cfg, seed=seed)
        old, _ = reference_mcts(logits, values, FirstActionValueModel(), cfg, seed=seed,
                                root_in_minmax=True)
        np.testing.assert_array_equal(out.visit_counts, ref)
        np.testing.assert_array_equal(out.visit_counts, [[2, 14]])
        np.testing.assert_array_equal(old, old_expected)
        assert out.visit_counts[0, 1] - out.visit_counts[0, 0] > old[0, 1] - old[0, 0]


# --------------------------------------------------------------------------------------------
# greedy_actions.
# --------------------------------------------------------------------------------------------


def test_greedy_actions_unique_max():
    counts = np.array([[1, 7, 2, 0], [10, 0, 0, 0], [0, 0, 0, 3]], np.int32)
    for seed in range(5):
        actions = greedy_actions(counts, np.random.default_rng(seed))
        assert actions.dtype == np.int64 and actions.shape == (3,)
        np.testing.assert_array_equal(actions, [1, 0, 3])


def test_greedy_actions_ties_spread_and_repeat():
    counts = np.array([[5, 0, 5, 5, 1], [3, 3, 3, 3, 3], [9, 2, 9, 0, 0]], np.int64)
    tied = [{0, 2, 3}, {0, 1, 2, 3, 4}, {0, 2}]
    seen = [set(), set(), set()]
    for seed in range(200):
        actions = greedy_actions(counts, np.random.default_rng(seed))
        for b in range(3):
            assert int(actions[b]) in tied[b]
            seen[b].add(int(actions[b]))
        again = greedy_actions(counts, np.random.default_rng(seed))
        np.testing.assert_array_equal(actions, again)
    assert seen == tied
    # Uniform over the tied actions: many draws from one generator.
    rng = np.random.default_rng(0)
    picks = np.array([greedy_actions(counts, rng) for _ in range(3000)])
    hist = np.bincount(picks[:, 1], minlength=5)
    assert (np.abs(hist - 600) < 90).all(), hist
    # One call draws rng.integers(0, n_tied) once (documented): the generator moves in step.
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    greedy_actions(counts, rng_a)
    rng_b.integers(0, np.array([3, 5, 2]))
    assert rng_a.integers(2**62) == rng_b.integers(2**62)


def test_greedy_actions_after_search():
    batch, num_actions = 5, 4
    logits, values, legal, noise = make_case(12, batch, num_actions, True, True)
    out = run_mcts(logits, values, PathModel(12, batch, num_actions), MCTSConfig(), noise, legal,
                   seed=3)
    actions = greedy_actions(out.visit_counts, np.random.default_rng(0))
    assert legal[np.arange(batch), actions].all()
    np.testing.assert_array_equal(out.visit_counts[np.arange(batch), actions],
                                  out.visit_counts.max(axis=1))


@pytest.mark.parametrize("counts,rng,match", [
    (np.zeros((2, 3), np.float32), np.random.default_rng(0), "visit_counts"),
    (np.zeros(3, np.int32), np.random.default_rng(0), "visit_counts"),
    (np.zeros((0, 3), np.int32), np.random.default_rng(0), "visit_counts"),
    (np.array([[1, -1]]), np.random.default_rng(0), "visit_counts"),
    (np.ones((2, 3), np.int32), 0, "rng"),
    (np.ones((2, 3), np.int32), np.random.RandomState(0), "rng"),
])
def test_greedy_actions_errors(counts, rng, match):
    with pytest.raises(ValueError, match=match):
        greedy_actions(counts, rng)


def test_exports():
    assert {"MCTSConfig", "SearchOutput", "run_mcts", "greedy_actions"} <= set(cython_mcts.__all__)


# --------------------------------------------------------------------------------------------
# Errors.
# --------------------------------------------------------------------------------------------

B, A = 3, 4


def good_fn(parent_ids, actions, depths):
    n = len(parent_ids)
    return np.zeros(n, np.float32), np.zeros(n, np.float32), np.zeros((n, A), np.float32)


def good_inputs():
    return np.zeros((B, A), np.float32), np.zeros(B, np.float32)


@pytest.mark.parametrize("field,value", [
    ("num_simulations", 0), ("num_simulations", -3), ("num_simulations", 2.5),
    ("num_simulations", True), ("discount", 1.5), ("discount", -0.1), ("discount", math.nan),
    ("pb_c_base", 0.0), ("pb_c_base", math.inf), ("pb_c_init", -1.0),
    ("root_exploration_fraction", 1.1), ("root_exploration_fraction", -0.1),
    ("value_prefix", "yes"), ("lstm_horizon_len", 0), ("lstm_horizon_len", 2.0),
    ("value_delta_max", -0.01), ("value_delta_max", math.nan),
])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        MCTSConfig(**{field: value})


def test_config_accepts_numpy_scalars():
    cfg = MCTSConfig(num_simulations=np.int64(8), discount=np.float32(0.5),
                     value_prefix=np.bool_(False), lstm_horizon_len=np.int32(3))
    assert type(cfg.num_simulations) is int and type(cfg.discount) is float
    assert cfg.value_prefix is False


@pytest.mark.parametrize("kwargs,match", [
    (dict(root_logits=np.zeros((B,), np.float32)), "root_logits"),
    (dict(root_logits=np.zeros((B, A, 1), np.float32)), "root_logits"),
    (dict(root_logits=np.zeros((0, A), np.float32), root_values=np.zeros(0, np.float32)),
     "root_logits"),
    (dict(root_logits=np.zeros((B, 0), np.float32)), "root_logits"),
    (dict(root_logits=np.zeros((B, A), np.int32)), "root_logits"),
    (dict(root_logits=np.full((B, A), np.nan, np.float32)), "root_logits"),
    (dict(root_logits=np.full((B, A), np.inf, np.float32)), "root_logits"),
    (dict(root_logits=np.full((B, A), 1e300)), "root_logits"),  # overflows float32
    (dict(root_logits="abc"), "root_logits"),
    (dict(root_values=np.zeros((B, 1), np.float32)), "root_values"),
    (dict(root_values=np.zeros(B + 1, np.float32)), "root_values"),
    (dict(root_values=np.array([0, 0, np.nan], np.float32)), "root_values"),
    (dict(root_values=np.zeros(B, bool)), "root_values"),
    (dict(noise=np.full((B, A), 0.25, np.float32)[:, :2]), "noise"),
    (dict(noise=np.full((B, A), np.nan, np.float32)), "noise"),
    (dict(noise=np.full((B, A), -0.25, np.float32)), "noise"),
    (dict(noise=np.zeros((B, A), np.float32)), "noise"),
    (dict(noise=np.array([[1, 0, 0, 0]] * B, np.float32),
          legal_actions=np.array([[False, True, True, True]] * B)), "noise"),
    (dict(legal_actions=np.ones((B, A + 1), bool)), "legal_actions"),
    (dict(legal_actions=np.ones((B, A), np.float32)), "legal_actions"),
    (dict(legal_actions=np.full((B, A), 2, np.int64)), "legal_actions"),
    (dict(legal_actions=np.array([[True] * A, [False] * A, [True] * A])), "legal_actions"),
    (dict(recurrent_fn=None), "recurrent_fn"),
    (dict(recurrent_fn=42), "recurrent_fn"),
    (dict(config=dict(num_simulations=5)), "config"),
])
def test_input_errors(kwargs, match):
    logits, values = good_inputs()
    args = dict(root_logits=logits, root_values=values, recurrent_fn=good_fn,
                config=MCTSConfig(num_simulations=3))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        run_mcts(**args)


@pytest.mark.parametrize("seed", [-1, 2**64, -(2**63), 1.5, np.float64(2.0), True, np.bool_(False),
                                  "3", None, [1]])
def test_bad_seed(seed):
    logits, values = good_inputs()
    with pytest.raises(ValueError, match="seed"):
        run_mcts(logits, values, good_fn, MCTSConfig(num_simulations=3), seed=seed)


def test_seed_accepts_numpy_integers():
    # numpy integers are taken at their value: the same search as the equal Python int.
    batch, num_actions = 4, 3
    logits, values = np.zeros((batch, num_actions), np.float32), np.zeros(batch, np.float32)
    cfg = MCTSConfig(num_simulations=7)
    for seed, same in [(np.int64(5), 5), (np.uint64(2**64 - 1), 2**64 - 1), (np.int8(0), 0)]:
        a = run_mcts(logits, values, flat_fn(num_actions), cfg, seed=seed)
        b = run_mcts(logits, values, flat_fn(num_actions), cfg, seed=same)
        np.testing.assert_array_equal(a.visit_counts, b.visit_counts)


def test_per_root_seeds():
    # Root b with seeds [B] searches as root b of a search with the int seeds[b]; the reference
    # agrees, and [s] * B is the int s.
    batch, num_actions = 4, 5
    logits, values = np.zeros((batch, num_actions), np.float32), np.zeros(batch, np.float32)
    cfg = MCTSConfig(num_simulations=9)
    seeds = np.array([5, 9, 5, 2**64 - 1], dtype=np.uint64)
    out = run_mcts(logits, values, flat_fn(num_actions), cfg, seed=seeds)
    for b, seed in enumerate(seeds):
        alone = run_mcts(logits, values, flat_fn(num_actions), cfg, seed=int(seed))
        np.testing.assert_array_equal(out.visit_counts[b], alone.visit_counts[b])
    ref_counts, _ = reference_mcts(logits, values, flat_fn(num_actions), cfg, seed=seeds)
    np.testing.assert_array_equal(out.visit_counts, ref_counts)
    same = run_mcts(logits, values, flat_fn(num_actions), cfg, seed=[7] * batch)
    as_int = run_mcts(logits, values, flat_fn(num_actions), cfg, seed=7)
    np.testing.assert_array_equal(same.visit_counts, as_int.visit_counts)
    for bad in (np.array([1, 2], np.uint64), np.array([1, -2, 3, 4]), [1, 2, 3, 4.5]):
        with pytest.raises(ValueError, match="seed"):
            run_mcts(logits, values, flat_fn(num_actions), cfg, seed=bad)


def _bad_output(kind):
    def fn(parent_ids, actions, depths):
        n = len(parent_ids)
        vp, v, lg = np.zeros(n, np.float32), np.zeros(n, np.float32), np.zeros((n, A), np.float32)
        if kind == "vp_shape":
            vp = vp[:, None]
        elif kind == "v_shape":
            v = np.zeros(n + 1, np.float32)
        elif kind == "lg_shape":
            lg = np.zeros((n, A + 1), np.float32)
        elif kind == "lg_1d":
            lg = np.zeros(n * A, np.float32)
        elif kind == "vp_int":
            vp = np.zeros(n, np.int64)
        elif kind == "lg_object":
            lg = np.empty((n, A), object)
        elif kind == "vp_nan":
            vp[-1] = np.nan
        elif kind == "v_inf":
            v[0] = np.inf
        elif kind == "lg_nan":
            lg[1, 2] = np.nan
        elif kind == "v_overflow":
            v = np.full(n, 1e300)
        elif kind == "none":
            return None
        elif kind == "pair":
            return vp, v
        elif kind == "lg_str":
            lg = "logits"
        return vp, v, lg
    return fn


@pytest.mark.parametrize("kind,match", [
    ("vp_shape", "value_prefix"), ("v_shape", "value"), ("lg_shape", "logits"),
    ("lg_1d", "logits"), ("vp_int", "value_prefix"), ("lg_object", "logits"),
    ("vp_nan", "value_prefix"), ("v_inf", "value"), ("lg_nan", "logits"),
    ("v_overflow", "value"), ("none", "recurrent_fn"), ("pair", "recurrent_fn"),
    ("lg_str", "logits"),
])
def test_recurrent_output_errors(kind, match):
    logits, values = good_inputs()
    with pytest.raises(ValueError, match=match):
        run_mcts(logits, values, _bad_output(kind), MCTSConfig(num_simulations=3))


def test_exceptions_from_recurrent_fn_propagate():
    def fn(parent_ids, actions, depths):
        raise KeyError("model failed")

    logits, values = good_inputs()
    with pytest.raises(KeyError, match="model failed"):
        run_mcts(logits, values, fn, MCTSConfig(num_simulations=3))


def test_low_level_search_rechecks_its_arguments():
    # The compiled entry point is reachable from Python too: bad arguments must raise, not crash.
    from cython_mcts._tree import search

    logits, values = good_inputs()
    legal = np.ones((B, A), np.uint8)
    seeds = np.zeros(B, np.uint64)
    args = [logits, values, good_fn, 3, 0.9, 19652.0, 1.25, 0.25, True, 5, 0.01, None, legal,
            seeds]
    search(*args)  # fine
    for index, bad in [(0, logits[:, ::2]), (0, logits.astype(np.float64)), (1, values[:2]),
                       (12, legal.astype(bool)), (12, np.zeros((B, A), np.uint8)),
                       (11, np.ones((B, A + 1), np.float32)), (3, 0), (9, 0), (2, None),
                       (13, 0), (13, seeds[:-1]), (13, seeds.astype(np.int64)),
                       (13, np.zeros((B, 2), np.uint64)), (13, None)]:
        broken = list(args)
        broken[index] = bad
        with pytest.raises(ValueError):
            search(*broken)


def test_root_values_that_overflow_in_the_backups_are_an_error_naming_the_roots():
    # Finite model outputs near float32's limit: the backups of root 1 overflow to infinity.
    big = 3e38

    def recurrent_fn(parent_ids, actions, depths):
        huge = np.where(np.arange(3) == 1, big, 0.5).astype(np.float32)
        return huge, huge, np.zeros((3, 2), np.float32)

    config = MCTSConfig(num_simulations=4, discount=0.997)
    with pytest.raises(ValueError, match=r"root\(s\) \[1\] is not finite"):
        run_mcts(np.zeros((3, 2), np.float32), np.array([0.0, big, 0.0], np.float32),
                 recurrent_fn, config)
    # The same search without the huge root is fine.
    out = run_mcts(np.zeros((1, 2), np.float32), np.zeros(1, np.float32),
                   lambda p, a, d: (np.full(1, 0.5, np.float32), np.full(1, 0.5, np.float32),
                                    np.zeros((1, 2), np.float32)), config)
    assert np.isfinite(out.root_values).all()
