"""Tests of the compiled batched MCTS (`cython_mcts`) against the contract (DESIGN.md 3.1).

- randomized comparisons with the plain-Python reference in `tests/mcts_reference.py`;
- small trees worked out by hand (in the comments);
- properties (visit sums, masks, determinism, the ids passed to `recurrent_fn`);
- every error case.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from cython_mcts import MCTSConfig, SearchOutput, run_mcts

try:  # tests/ on sys.path (pytest's default rootdir-less import of test modules)
    from mcts_reference import reference_mcts
except ImportError:  # tests/ imported as a package
    from tests.mcts_reference import reference_mcts

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


def compare(logits, values, legal, noise, cfg, seed, mode, scale=1.0):
    batch, num_actions = logits.shape
    model = PathModel(seed, batch, num_actions, mode, scale)
    out = run_mcts(logits, values, model, cfg, noise=noise, legal_actions=legal)
    ref_model = PathModel(seed, batch, num_actions, mode, scale)
    ref_counts, ref_values = reference_mcts(logits, values, ref_model, cfg, noise=noise,
                                            legal_actions=legal)
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
    logits, values, legal, noise = make_case(case_seed, batch, num_actions, masked, noisy)
    out = compare(logits, values * scale, legal, noise, cfg, case_seed, mode, scale)
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
    compare(logits, values, legal, None, cfg, seed=horizon, mode="continuous")


def test_matches_reference_many_simulations():
    cfg = MCTSConfig(num_simulations=200)
    logits, values, legal, noise = make_case(7, 4, 4, True, True)
    compare(logits, values, legal, noise, cfg, seed=7, mode="continuous")


def test_matches_reference_atari_setting():
    # EfficientZero's Atari search: 64 roots, 4 actions, 50 simulations, noise, value prefix.
    cfg = MCTSConfig()
    logits, values, _, noise = make_case(8, 64, 4, False, True)
    compare(logits, values, None, noise, cfg, seed=8, mode="continuous")


def test_roots_are_independent():
    # A root searched inside a batch gets exactly what it gets when searched alone (no state
    # leaks between batch elements).
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


def test_hand_tree_selection_and_backup():
    # MuZero mode, A = 2, discount 0.5, root logits [0, 0] (priors 1/2, 1/2), root value 0.
    # Root start: N = 1, value_sum = 0, min-max = {0.5 * 0} = [0, 0].
    # sim 1: no child visited, m(root) = 0, Qn = 0 for both (max == min): a tie on the prior
    #   term -> action 0 (lowest index). Node 1 = (0, a0), depth 1: reward 1, value 0.
    #   backup: node1 sum 0, n 1, q = 1 + 0.5 * 0 = 1 -> min-max [0, 1]; v = 1 + 0 = 1;
    #   root sum 1, n 2, q = 0.5 * 0.5 = 0.25.
    # sim 2: N = 2. a0: Q = 1 -> Qn 1; a1 unvisited: m(root) = 1 -> Qn 1.
    #   pb_c(2) ~ 1.25015: a0 1 + 1.25015 * sqrt(2) / 2 * 0.5 = 1.442; a1 1 + 1.25015 * sqrt(2)
    #   * 0.5 = 1.884 -> a1. Node 2 = (0, a1): reward 0, value -1 -> q = -0.5, min-max
    #   [-0.5, 1]; v = -0.5; root sum 0.5, n 3.
    # sim 3: N = 3. a0: Qn = (1 + 0.5) / 1.5 = 1; a1: Q = -0.5 -> Qn 0. Equal prior terms
    #   (both n = 1) -> a0, descend into node 1 (N = 1, no visited child):
    #   m(node1) = (m(root) + 0) / 1 = (1 - 0.5) / 2 = 0.25; its logits [0, 0] -> tie -> a0.
    #   Node 3 = (1, a0), depth 2: reward 0.5, value 2: q = 0.5 + 1 = 1.5; v = 1.5;
    #   node1: sum 1.5, n 2; v = 1 + 0.5 * 1.5 = 1.75; root sum 2.25, n 4.
    # Visits [2, 1]; root value 2.25 / 4 = 0.5625.
    model = TableModel({
        (0, 0): (1.0, 0.0, [0.0, 0.0]),
        (0, 1): (0.0, -1.0, [0.0, 0.0]),
        (1, 0): (0.5, 2.0, [0.0, 0.0]),
    })
    cfg = MCTSConfig(num_simulations=3, discount=0.5, value_prefix=False)
    out = run_mcts(np.zeros((1, 2), np.float32), np.zeros(1, np.float32), model, cfg)
    assert model.calls == [(0, 0, 1), (0, 1, 1), (1, 0, 2)]
    np.testing.assert_array_equal(out.visit_counts, [[2, 1]])
    np.testing.assert_allclose(out.root_values, [0.5625], rtol=1e-6)
    np.testing.assert_allclose(out.search_policy, [[2 / 3, 1 / 3]], rtol=1e-6)


def test_hand_tree_mean_q_for_unvisited_children():
    # MuZero mode, discount 1, root logits [1, 0]: priors p0 = e / (e + 1) = 0.731,
    # p1 = 0.269; root value 0 -> min-max [0, 0].
    # sim 1: a0 (larger prior). Node 1: reward 0, value -1 -> q = -1, min-max [-1, 0];
    #   root gets -1: sum -1, n 2 (q = -0.5).
    # sim 2: N = 2. a0: Q = -1 -> Qn 0. a1 unvisited takes m(root) = mean Q of visited = -1
    #   -> Qn 0. Scores: a0 pb_c * sqrt(2) / 2 * 0.731 = 0.517 pb_c, a1 pb_c * sqrt(2) * 0.269
    #   = 0.380 pb_c -> a0. (Had an unvisited child counted as Q = 0, Qn would be 1 and a1 would
    #   win.) Descend to node 1 (N = 1): m(node1) = (m(root) + 0) / 1 = -1 -> Qn 0; logits
    #   [0, 0] -> tie -> a0. Node 2 = (1, a0), depth 2: reward 0, value -1; v = -1 all the way:
    #   node1 sum -2, n 2; root sum -2, n 3.
    # sim 3: N = 3. a0: Q = 0 + (-2 / 2) = -1 -> Qn 0, a1: m(root) = -1 -> Qn 0. Scores:
    #   a0 pb_c * sqrt(3) / 3 * 0.731 = 0.422 pb_c, a1 pb_c * sqrt(3) * 0.269 = 0.466 pb_c -> a1.
    #   Node 3 = (0, a1): reward 0.5, value 1 -> v = 1.5; root sum -0.5, n 4.
    # Visits [2, 1]; root value -0.5 / 4 = -0.125.
    model = TableModel({
        (0, 0): (0.0, -1.0, [0.0, 0.0]),
        (1, 0): (0.0, -1.0, [0.0, 0.0]),
        (0, 1): (0.5, 1.0, [0.0, 0.0]),
    })
    cfg = MCTSConfig(num_simulations=3, discount=1.0, value_prefix=False)
    out = run_mcts(np.array([[1.0, 0.0]], np.float32), np.zeros(1, np.float32), model, cfg)
    assert model.calls == [(0, 0, 1), (1, 0, 2), (0, 1, 1)]
    np.testing.assert_array_equal(out.visit_counts, [[2, 1]])
    np.testing.assert_allclose(out.root_values, [-0.125], rtol=1e-6)


def test_hand_tree_root_updates_min_max():
    # The root's own Q (0 + discount * root value) enters the min-max statistics, at the start
    # and on every backup. MuZero mode, discount 0.5, root value 2, every logit 0 (priors 1/2).
    # Start: root N 1, sum 2, min-max {0.5 * 2} = [1, 1].
    # sim 1: all Qn = clip(m = 0) = 0 -> tie -> a0. Node 1 = (0, a0): reward 0.5, value 1:
    #   q = 0.5 + 0.5 = 1; v = 1; root sum 3, N 2, root q = 0.5 * 1.5 = 0.75 -> [0.75, 1].
    # sim 2: a0 Qn = (1 - 0.75) / 0.25 = 1, a1 unvisited m(root) = 1 -> Qn 1; a1 has the
    #   larger exploration term (n = 0) -> a1. Node 2 = (0, a1): reward 0, value 2: q = 1;
    #   v = 1; root sum 4, N 3, root q = 0.5 * 4 / 3 = 0.667 -> [0.667, 1].
    # sim 3: a0 and a1 both Q = 1 (Qn 1), both n = 1 -> tie -> a0; node 1 (N 1) has no
    #   visited child, its children tie -> a0. Node 3 = (1, a0), depth 2: reward 2, value 0:
    #   q = 2 -> [0.667, 2]; v = 2; node 1 sum 3, n 2, q = 0.5 + 0.5 * 1.5 = 1.25;
    #   v = 0.5 + 0.5 * 2 = 1.5; root sum 5.5, N 4, root q = 0.6875.
    # sim 4: N = 4, pb_c(4) = 1.25025. a0: Qn = (1.25 - 0.667) / 1.333 = 0.4375,
    #   U = 1.25025 * 2 / 3 * 0.5 = 0.4168 -> 0.854. a1: Qn = (1 - 0.667) / 1.333 = 0.25,
    #   U = 1.25025 * 2 / 2 * 0.5 = 0.6251 -> 0.875 -> a1. (Leaving the root out of the
    #   statistics gives [1, 2], Qn 0.25 and 0, and a0 would win.) Node 2 (N 1): its children
    #   tie -> a0. Node 4 = (2, a0): reward 0, value 3: v = 3 -> node 2 -> 0 + 0.5 * 3 = 1.5
    #   -> root 0.75: root sum 6.25, N 5.
    # Visits [2, 2]; root value 6.25 / 5 = 1.25.
    model = TableModel({
        (0, 0): (0.5, 1.0, [0.0, 0.0]),
        (0, 1): (0.0, 2.0, [0.0, 0.0]),
        (1, 0): (2.0, 0.0, [0.0, 0.0]),
        (2, 0): (0.0, 3.0, [0.0, 0.0]),
    })
    cfg = MCTSConfig(num_simulations=4, discount=0.5, value_prefix=False)
    out = run_mcts(np.zeros((1, 2), np.float32), np.full(1, 2.0, np.float32), model, cfg)
    assert model.calls == [(0, 0, 1), (0, 1, 1), (1, 0, 2), (2, 0, 2)]
    np.testing.assert_array_equal(out.visit_counts, [[2, 2]])
    np.testing.assert_allclose(out.root_values, [1.25], rtol=1e-6)


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
    out1 = run_mcts(logits, values, PathModel(1, batch, num_actions), cfg, noise, legal)
    out2 = run_mcts(logits, values, PathModel(1, batch, num_actions), cfg, noise, legal)
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
    args = [logits, values, good_fn, 3, 0.9, 19652.0, 1.25, 0.25, True, 5, 0.01, None, legal]
    search(*args)  # fine
    for index, bad in [(0, logits[:, ::2]), (0, logits.astype(np.float64)), (1, values[:2]),
                       (12, legal.astype(bool)), (12, np.zeros((B, A), np.uint8)),
                       (11, np.ones((B, A + 1), np.float32)), (3, 0), (9, 0), (2, None)]:
        broken = list(args)
        broken[index] = bad
        with pytest.raises(ValueError):
            search(*broken)
