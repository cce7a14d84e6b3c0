"""Tests of the compiled Gumbel MuZero search (`cython_mcts.run_gumbel_mcts`, docs/design.md 3.1b).

- randomized comparisons with the plain-Python reference in `tests/gumbel_reference.py`
  (actions, visit counts and calls identical, improved policies within 1e-5);
- mctx's sequential-halving schedule (a literal port of mctx's function, and its published
  table for 16 simulations over 4 actions), followed simulation by simulation;
- small cases worked out by hand (in the comments);
- properties (visit sums, masks, determinism, independence of roots, inputs untouched);
- every error case.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

import cython_mcts
from cython_mcts import GumbelSearchOutput, MCTSConfig, run_gumbel_mcts

try:  # tests/ on sys.path (pytest's default rootdir-less import of test modules)
    from gumbel_reference import mctx_considered_visits, reference_gumbel_mcts
except ImportError:  # tests/ imported as a package
    from tests.gumbel_reference import mctx_considered_visits, reference_gumbel_mcts


class PathModel:
    """Fake `recurrent_fn` whose outputs depend only on (root b, action path from the root).

    It rebuilds each new state's path from `parent_ids`/`actions` (asserting the ids and depths
    are consistent), so a wrong parent id changes the outputs. "continuous": Gaussian floats;
    "coarse": small integers (many exact ties between actions and between Q values).
    """

    def __init__(self, seed: int, batch: int, num_actions: int, mode: str = "continuous",
                 scale: float = 1.0, rows: int = 4096, root_ids: list[int] | None = None):
        rng = np.random.default_rng(seed)
        self.root_ids = list(range(batch)) if root_ids is None else root_ids
        self.batch, self.num_actions, self.rows = batch, num_actions, rows
        if mode == "continuous":
            table = rng.standard_normal((rows, 2 + num_actions)) * scale
        else:
            table = rng.integers(-1, 2, size=(rows, 2 + num_actions)) * scale
        self.table = table.astype(np.float32)
        self.paths: list[dict[int, tuple[int, ...]]] = [{0: ()} for _ in range(batch)]
        self.calls = 0
        self.log: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def __call__(self, parent_ids, actions, depths):
        self.calls += 1
        sim = self.calls
        assert parent_ids.dtype == actions.dtype == depths.dtype == np.int64
        assert parent_ids.shape == actions.shape == depths.shape == (self.batch,)
        self.log.append((parent_ids.copy(), actions.copy(), depths.copy()))
        out = np.empty((self.batch, 2 + self.num_actions), dtype=np.float32)
        for b in range(self.batch):
            parent = int(parent_ids[b])
            assert 0 <= parent < sim and 0 <= int(actions[b]) < self.num_actions
            path = self.paths[b][parent] + (int(actions[b]),)
            assert len(path) == int(depths[b])
            self.paths[b][sim] = path
            out[b] = self.table[hash((self.root_ids[b], path)) % self.rows]
        return out[:, 0].copy(), out[:, 1].copy(), out[:, 2:].copy()


def make_case(seed: int, batch: int, num_actions: int, masked: bool, gumbel_scale: float,
              coarse: bool = False):
    """Random roots. `coarse`: integer logits in [-1, 1] (with gumbel_scale 0: root ties)."""
    rng = np.random.default_rng(20_000 + seed)
    logits = (rng.standard_normal((batch, num_actions)) * 2).astype(np.float32)
    if coarse:
        logits = rng.integers(-1, 2, size=(batch, num_actions)).astype(np.float32)
    values = rng.standard_normal(batch).astype(np.float32)
    gumbel = (rng.gumbel(size=(batch, num_actions)) * gumbel_scale).astype(np.float32)
    legal = None
    if masked:
        legal = rng.random((batch, num_actions)) < 0.5
        legal[np.arange(batch), rng.integers(0, num_actions, batch)] = True
    return logits, values, gumbel, legal


def compare(logits, values, gumbel, legal, cfg, seed, mode="continuous", scale=1.0, **kwargs):
    """Runs the compiled search and the reference; asserts they agree; returns (out, trees)."""
    batch, num_actions = logits.shape
    model = PathModel(seed, batch, num_actions, mode, scale)
    out = run_gumbel_mcts(logits, values, model, cfg, gumbel, legal, **kwargs)
    ref_model = PathModel(seed, batch, num_actions, mode, scale)
    trees: list = []
    action, policy, counts, root_values = reference_gumbel_mcts(
        logits, values, ref_model, cfg, gumbel, legal, trees_out=trees, **kwargs)
    assert model.calls == ref_model.calls == cfg.num_simulations
    for (p, a, d), (rp, ra, rd) in zip(model.log, ref_model.log, strict=True):
        np.testing.assert_array_equal(p, rp)
        np.testing.assert_array_equal(a, ra)
        np.testing.assert_array_equal(d, rd)
    np.testing.assert_array_equal(out.visit_counts, counts)
    np.testing.assert_array_equal(out.action, action)
    np.testing.assert_allclose(out.improved_policy, policy, rtol=0, atol=1e-5)
    np.testing.assert_allclose(out.root_values, root_values, rtol=1e-5, atol=1e-5)
    return out, trees, model


def check_properties(out, legal, gumbel, logits, cfg, m):
    batch, num_actions = logits.shape
    legal = np.ones((batch, num_actions), bool) if legal is None else legal
    assert isinstance(out, GumbelSearchOutput)
    assert out.action.dtype == np.int64 and out.action.shape == (batch,)
    assert out.visit_counts.dtype == np.int32 and out.visit_counts.shape == (batch, num_actions)
    assert out.improved_policy.dtype == np.float32
    assert out.improved_policy.shape == (batch, num_actions)
    assert out.root_values.dtype == np.float32 and out.root_values.shape == (batch,)
    assert (out.visit_counts.sum(axis=1) == cfg.num_simulations).all()
    assert (out.visit_counts[~legal] == 0).all()
    assert (out.improved_policy[~legal] == 0).all()
    np.testing.assert_allclose(out.improved_policy.sum(axis=1), 1.0, rtol=1e-5)
    rows = np.arange(batch)
    assert legal[rows, out.action].all()
    assert (out.visit_counts[rows, out.action] == out.visit_counts.max(axis=1)).all()
    # Only the considered actions (top min(m, legal) by g + logits) are ever visited.
    score = np.where(legal, gumbel.astype(np.float64) + logits, -np.inf)
    for b in range(batch):
        n_considered = min(m, int(legal[b].sum()))
        order = np.argsort(-score[b], kind="stable")
        outside = order[n_considered:]
        assert (out.visit_counts[b, outside] == 0).all()


# --------------------------------------------------------------------------------------------
# Randomized comparisons with the reference.
# --------------------------------------------------------------------------------------------

_GRID = list(enumerate(itertools.product(
    [1, 2, 3, 4, 7, 18],    # num_actions
    [True, False],          # value_prefix
    [False, True],          # masked
    ["continuous", "coarse"],
    range(5),               # seed
)))


@pytest.mark.parametrize("case_seed,params", _GRID,
                         ids=[f"A{p[0]}-vp{int(p[1])}-mask{int(p[2])}-{p[3]}-{p[4]}"
                              for _, p in _GRID])
def test_matches_reference(case_seed, params):
    num_actions, value_prefix, masked, mode, _ = params
    rng = np.random.default_rng(case_seed)
    batch = int(rng.choice([1, 2, 5, 16]))
    cfg = MCTSConfig(
        num_simulations=int(rng.choice([1, 2, 3, 4, 7, 16, 32, 50, 64])),
        discount=float(rng.choice([0.997**4, 1.0, 0.5])),
        value_prefix=value_prefix,
        lstm_horizon_len=int(rng.choice([1, 2, 3, 5])),
    )
    m = int(rng.choice([1, 2, 3, 4, 8, 16]))
    value_scale = float(rng.choice([0.1, 0.1, 1.0, 0.0]))
    maxvisit_init = float(rng.choice([50.0, 50.0, 0.0, 3.5]))
    gumbel_scale = float(rng.choice([1.0, 1.0, 0.0, 3.0]))
    scale = float(rng.choice([1.0, 1e-3, 100.0]))
    logits, values, gumbel, legal = make_case(case_seed, batch, num_actions, masked, gumbel_scale,
                                              coarse=mode == "coarse")
    out, _, _ = compare(logits, values * scale, gumbel, legal, cfg, case_seed, mode, scale,
                        max_num_considered_actions=m, value_scale=value_scale,
                        maxvisit_init=maxvisit_init)
    check_properties(out, legal, gumbel, logits, cfg, m)


_TREE_GRID = list(enumerate(itertools.product(
    [1, 2, 4, 18],          # num_actions
    [True, False],          # value_prefix
    [False, True],          # masked
    range(3),               # seed
)))


@pytest.mark.parametrize("case_seed,params", _TREE_GRID,
                         ids=[f"A{p[0]}-vp{int(p[1])}-mask{int(p[2])}-{p[3]}"
                              for _, p in _TREE_GRID])
def test_tree_normalization_matches_reference(case_seed, params):
    num_actions, value_prefix, masked, _ = params
    rng = np.random.default_rng(500 + case_seed)
    batch = int(rng.choice([1, 3, 16]))
    cfg = MCTSConfig(
        num_simulations=int(rng.choice([1, 2, 4, 7, 16, 50])),
        discount=float(rng.choice([0.997**4, 1.0, 0.5])),
        value_prefix=value_prefix,
        lstm_horizon_len=int(rng.choice([1, 3, 5])),
        # 0: no floor; 0.01: EfficientZero's; 1: wider than most trees' range.
        value_delta_max=float(rng.choice([0.0, 0.01, 1.0])),
    )
    m = int(rng.choice([1, 2, 4, 16]))
    scale = float(rng.choice([1.0, 1e-3, 100.0]))
    logits, values, gumbel, legal = make_case(700 + case_seed, batch, num_actions, masked, 1.0)
    out, trees, _ = compare(logits, values * scale, gumbel, legal, cfg, case_seed,
                            "continuous", scale, max_num_considered_actions=m,
                            q_normalization="tree")
    check_properties(out, legal, gumbel, logits, cfg, m)
    assert all(len(tree.tree_qs) > 0 for tree in trees)


def test_hand_tree_normalization_keeps_a_small_gap_small():
    # MuZero mode, discount 1, A = 2, logits 0, zero noise, 2 simulations: a0 then a1 (schedule
    # [0, 0], ties to the first). Node 1: value 1.0 -> Q(a0) = 1.0; node 2: value 1.1 -> Q(a1) =
    # 1.1. Tree statistics: min 1.0, max 1.1.
    #   value_delta_max 1: (q - 1.0) / max(0.1, 1) = [0, 0.1]; sigma = 5.1 * that = [0, 0.51].
    #   value_delta_max 0.01: (q - 1.0) / 0.1 = [0, 1]: sigma [0, 5.1], as a node's own min-max.
    # Root value: (0 + 1.0 + 1.1) / 3 = 0.7; the action: both once, a1 by sigma.
    model = TableModel({(0, 0): (0.0, 1.0, [0, 0]), (0, 1): (0.0, 1.1, [0, 0])})
    args = (np.zeros((1, 2), np.float32), np.zeros(1, np.float32), model)
    for floor, z in ((1.0, [0.0, 0.51]), (0.01, [0.0, 5.1])):
        cfg = MCTSConfig(num_simulations=2, discount=1.0, value_prefix=False,
                         value_delta_max=floor)
        out = run_gumbel_mcts(*args, cfg, np.zeros((1, 2), np.float32), q_normalization="tree")
        z = np.array(z)
        np.testing.assert_allclose(out.improved_policy[0], np.exp(z) / np.exp(z).sum(),
                                   rtol=1e-5)
        np.testing.assert_array_equal(out.visit_counts, [[1, 1]])
        assert out.action[0] == 1
        np.testing.assert_allclose(out.root_values, [0.7], rtol=1e-6)
    # The node's own min-max (mctx) makes the same 0.1 gap the whole [0, 1].
    node = run_gumbel_mcts(*args, cfg, np.zeros((1, 2), np.float32))
    np.testing.assert_allclose(node.improved_policy, out.improved_policy, rtol=1e-6)


@pytest.mark.parametrize("horizon", [1, 2, 3, 5, 7])
@pytest.mark.parametrize("value_prefix", [True, False])
def test_matches_reference_deep_trees(horizon, value_prefix):
    # One action: every simulation extends a chain, so the value-prefix resets at every
    # multiple of the horizon are all exercised (and the interior rule with A = 1).
    cfg = MCTSConfig(num_simulations=20, lstm_horizon_len=horizon, value_prefix=value_prefix)
    logits, values, gumbel, _ = make_case(horizon, 3, 1, False, 1.0)
    out, _, model = compare(logits, values, gumbel, None, cfg, seed=horizon)
    assert [int(d[0]) for _, _, d in model.log] == list(range(1, 21))
    # Two actions with the second one illegal at two of three roots: the same, below a root.
    logits, values, gumbel, _ = make_case(horizon, 3, 2, False, 1.0)
    legal = np.array([[True, False], [False, True], [True, True]])
    compare(logits, values, gumbel, legal, cfg, seed=horizon)


@pytest.mark.parametrize("mode", ["continuous", "coarse"])
def test_matches_reference_atari_setting(mode):
    # 64 roots, 4 actions, 16 simulations: the few-simulations setting Gumbel is meant for.
    cfg = MCTSConfig(num_simulations=16)
    logits, values, gumbel, _ = make_case(8, 64, 4, False, 1.0)
    out, _, _ = compare(logits, values, gumbel, None, cfg, seed=8, mode=mode)
    check_properties(out, None, gumbel, logits, cfg, 16)


def test_matches_reference_many_simulations():
    cfg = MCTSConfig(num_simulations=200, lstm_horizon_len=3)
    logits, values, gumbel, legal = make_case(9, 3, 18, True, 1.0)
    out, _, _ = compare(logits, values, gumbel, legal, cfg, seed=9,
                        max_num_considered_actions=8)
    check_properties(out, legal, gumbel, logits, cfg, 8)


def test_roots_are_independent():
    # A root searched inside a batch gets exactly what it gets when searched alone.
    batch, num_actions = 6, 5
    logits, values, gumbel, legal = make_case(10, batch, num_actions, True, 1.0)
    cfg = MCTSConfig(num_simulations=24, lstm_horizon_len=3)
    together = run_gumbel_mcts(logits, values, PathModel(10, batch, num_actions), cfg, gumbel,
                               legal, max_num_considered_actions=4)
    for b in range(batch):
        s = slice(b, b + 1)
        alone = run_gumbel_mcts(logits[s], values[s], PathModel(10, 1, num_actions, root_ids=[b]),
                                cfg, gumbel[s], legal[s], max_num_considered_actions=4)
        np.testing.assert_array_equal(alone.visit_counts[0], together.visit_counts[b])
        np.testing.assert_array_equal(alone.improved_policy[0], together.improved_policy[b])
        assert alone.action[0] == together.action[b]
        assert alone.root_values[0] == together.root_values[b]


# --------------------------------------------------------------------------------------------
# mctx's sequential-halving schedule.
# --------------------------------------------------------------------------------------------


def test_schedule_is_mctx_published_table():
    # mctx's `get_sequence_of_considered_visits(4, 16)`: each of 4 actions twice (a round of
    # max(1, int(16 / (log2(4) * 4))) = 2 passes), then the 2 best 4 times each
    # (int(16 / (2 * 2)) = 4 passes).
    expected = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert mctx_considered_visits(4, 16) == expected
    assert cython_mcts._considered_visit_sequence(4, 16) == expected
    table = cython_mcts._considered_visit_table(5, 16)
    assert table.shape == (5, 16) and table.dtype == np.int32
    np.testing.assert_array_equal(table[4], expected)
    np.testing.assert_array_equal(table[1], np.arange(16))   # one action: every visit
    np.testing.assert_array_equal(table[0], np.arange(16))
    # mctx's defaults, 16 considered actions and 50 simulations (log2(16) = 4): rounds of
    # max(1, int(50 / (4 * c))) passes over c = 16, 8, 4, 2, 2 actions: 1, 1, 3, 6, 6 passes.
    seq = [0] * 16 + [1] * 8 + [2] * 4 + [3] * 4 + [4] * 4
    seq += [5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10] + [11, 11]
    assert mctx_considered_visits(16, 50) == seq
    assert cython_mcts._considered_visit_sequence(16, 50) == seq


def test_schedule_matches_literal_mctx_port():
    for m in range(0, 21):
        for n in itertools.chain(range(1, 70), [100, 200, 400]):
            assert cython_mcts._considered_visit_sequence(m, n) == mctx_considered_visits(m, n), \
                (m, n)


@pytest.mark.parametrize("num_actions,m,sims", [(4, 4, 16), (8, 4, 16), (18, 16, 50),
                                                (5, 3, 23), (6, 16, 64), (3, 2, 7)])
def test_root_follows_the_schedule(num_actions, m, sims):
    # Every simulation takes a root action visited exactly `schedule[i]` times so far.
    cfg = MCTSConfig(num_simulations=sims)
    batch = 4
    logits, values, gumbel, _ = make_case(num_actions + sims, batch, num_actions, False, 1.0)
    model = PathModel(1, batch, num_actions)
    out = run_gumbel_mcts(logits, values, model, cfg, gumbel, max_num_considered_actions=m)
    schedule = mctx_considered_visits(min(m, num_actions), sims)
    for b in range(batch):
        counts = np.zeros(num_actions, int)
        for i in range(sims):
            sim = i + 1
            root_action = model.paths[b][sim][0]
            assert counts[root_action] == schedule[i], (b, i)
            counts[root_action] += 1
        np.testing.assert_array_equal(counts, out.visit_counts[b])


def test_sixteen_simulations_over_four_actions_flat_model():
    # Flat model (zero values and rewards): every completed Q is equal, so sigma = 0 and the
    # order is g + logits throughout: the schedule [0]*4 [1]*4 [2,2,3,3,4,4,5,5] gives the
    # top two 6 visits and the next two 2 (mctx's table, read as visit counts).
    logits = np.array([[0.1, 0.5, -0.2, 0.0, 0.3, -1.0]], np.float32)
    gumbel = np.array([[0.0, -0.3, 0.9, 0.05, 0.0, 0.0]], np.float32)
    # g + logits = [0.1, 0.2, 0.7, 0.05, 0.3, -1.0]: the top 4 are 2, 4, 1, 0.
    out = run_gumbel_mcts(logits, np.zeros(1, np.float32), flat_fn(6, 0.0),
                          MCTSConfig(num_simulations=16), gumbel, max_num_considered_actions=4)
    np.testing.assert_array_equal(out.visit_counts, [[2, 2, 6, 0, 6, 0]])
    assert out.action[0] == 2


@pytest.mark.parametrize("num_actions,sims,m,masked,gumbel_scale", [
    (4, 16, 16, False, 1.0), (7, 5, 4, True, 1.0), (18, 50, 16, True, 0.0), (3, 32, 2, False, 1.0),
])
def test_matches_mctx_when_installed(num_actions, sims, m, masked, gumbel_scale):
    # The same inputs through DeepMind's mctx (`gumbel_muzero_policy`, MuZero rewards, float32)
    # when jax and mctx are installed (not a test dependency): equal visit counts and actions,
    # improved policies within float32 rounding. The model hashes the action path into a table.
    jax = pytest.importorskip("jax")
    mctx = pytest.importorskip("mctx")
    jnp = jax.numpy
    batch, modulus, rows, discount = 6, 1_000_003, 4096, 0.997**4
    rng = np.random.default_rng(sims + num_actions)
    table = rng.standard_normal((rows, 2 + num_actions)).astype(np.float32)
    logits, values, _, legal = make_case(sims, batch, num_actions, masked, 0.0)
    legal = np.ones((batch, num_actions), bool) if legal is None else legal
    key = jax.random.PRNGKey(sims)
    gumbel = np.asarray(gumbel_scale * jax.random.gumbel(jax.random.split(key)[1],
                                                         (batch, num_actions), jnp.float32))

    def mctx_fn(params, rng_key, action, code):
        code = (code * 31 + action + 1) % modulus
        row = jnp.asarray(table)[code % rows]
        return mctx.RecurrentFnOutput(reward=row[:, 0], discount=jnp.full(batch, discount),
                                      prior_logits=row[:, 2:], value=row[:, 1]), code

    root = mctx.RootFnOutput(prior_logits=jnp.asarray(logits), value=jnp.asarray(values),
                             embedding=jnp.arange(batch, dtype=jnp.int32) * 7919)
    policy = mctx.gumbel_muzero_policy(None, key, root, mctx_fn, sims,
                                       invalid_actions=jnp.asarray(~legal),
                                       max_num_considered_actions=m, gumbel_scale=gumbel_scale)
    codes = [{0: b * 7919} for b in range(batch)]

    def our_fn(parent_ids, actions, depths):
        sim = len(codes[0])
        out = np.empty((batch, 2 + num_actions), np.float32)
        for b in range(batch):
            codes[b][sim] = (codes[b][int(parent_ids[b])] * 31 + int(actions[b]) + 1) % modulus
            out[b] = table[codes[b][sim] % rows]
        return out[:, 0].copy(), out[:, 1].copy(), out[:, 2:].copy()

    out = run_gumbel_mcts(logits, values, our_fn,
                          MCTSConfig(num_simulations=sims, discount=discount, value_prefix=False),
                          gumbel, legal, max_num_considered_actions=m)
    np.testing.assert_array_equal(out.visit_counts,
                                  np.asarray(policy.search_tree.summary().visit_counts))
    np.testing.assert_array_equal(out.action, np.asarray(policy.action))
    np.testing.assert_allclose(out.improved_policy, np.asarray(policy.action_weights), atol=1e-5)
    np.testing.assert_allclose(out.root_values,
                               np.asarray(policy.search_tree.node_values[:, 0]), atol=1e-4)


# --------------------------------------------------------------------------------------------
# Hand-worked cases.
# --------------------------------------------------------------------------------------------


def flat_fn(num_actions, value=0.0, reward=0.0, logits=None):
    """Every node: the same reward (or value prefix), value and logits."""
    def fn(parent_ids, actions, depths):
        n = len(parent_ids)
        lg = np.zeros((n, num_actions), np.float32) if logits is None else np.tile(
            np.asarray(logits, np.float32), (n, 1))
        return np.full(n, reward, np.float32), np.full(n, value, np.float32), lg
    return fn


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


@pytest.mark.parametrize("seed", range(10))
def test_two_simulations_visit_the_top_two_by_gumbel_plus_logits(seed):
    # 2 simulations over 4 actions: the first goes to the best g + logits (all sigma equal
    # before any visit); the second to the best of the unvisited ones (scheduled count 0), which
    # share one completed Q (the mixed value) and so one sigma: the second best g + logits.
    rng = np.random.default_rng(seed)
    batch = 8
    logits = rng.standard_normal((batch, 4)).astype(np.float32)
    gumbel = rng.gumbel(size=(batch, 4)).astype(np.float32)
    values = rng.standard_normal(batch).astype(np.float32)
    out = run_gumbel_mcts(logits, values, PathModel(seed, batch, 4), MCTSConfig(num_simulations=2),
                          gumbel)
    top2 = np.argsort(-(gumbel.astype(np.float64) + logits), axis=1)[:, :2]
    expected = np.zeros((batch, 4), np.int32)
    np.put_along_axis(expected, top2, 1, axis=1)
    np.testing.assert_array_equal(out.visit_counts, expected)


@pytest.mark.parametrize("value_prefix", [True, False])
@pytest.mark.parametrize("value,discount", [(0.0, 0.997**4), (0.7, 1.0), (-3.0, 1.0)])
def test_flat_values_and_zero_noise_give_the_prior(value_prefix, value, discount):
    # Zero rewards and one value everywhere (discount 1 unless the value is 0): every Q is
    # that value, so is the mixed value; all completed Q are equal, the rescaled ones 0 and
    # sigma = 0: the improved policy is softmax(logits) over the legal actions.
    rng = np.random.default_rng(3)
    batch, num_actions = 5, 6
    logits = rng.standard_normal((batch, num_actions)).astype(np.float32)
    legal = rng.random((batch, num_actions)) < 0.6
    legal[:, 2] = True
    legal[0] = True
    cfg = MCTSConfig(num_simulations=30, discount=discount, value_prefix=value_prefix)
    out = run_gumbel_mcts(logits, np.full(batch, value, np.float32),
                          flat_fn(num_actions, value=value, logits=rng.standard_normal(6)), cfg,
                          np.zeros((batch, num_actions), np.float32), legal)
    masked = np.where(legal, logits.astype(np.float64), -np.inf)
    prior = np.exp(masked - masked.max(axis=1, keepdims=True))
    prior /= prior.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(out.improved_policy, prior, rtol=0, atol=1e-6)
    np.testing.assert_allclose(out.root_values, value, rtol=1e-6, atol=1e-6)


def test_hand_two_actions_completed_q_and_improved_policy():
    # MuZero mode, A = 3, discount 0.5, logits 0, g = [0.5, 0.2, 0], root value 0, m = 2:
    # the considered actions are a0, a1 (the top 2 by g + logits); schedule for m = 2, n = 2:
    # [0, 0].
    # sim 1: no visits, sigma = 0 for all: a0 (g 0.5). Node 1: reward 1, value 2:
    #   Q(a0) = 1 + 0.5 * 2 = 2; root value sum 0 + 2.
    # sim 2: count 0 scheduled; a0 has 1: a1 (g 0.2 > g 0 of a2, which is not considered).
    #   Node 2: reward 0, value -2: Q(a1) = -1; root value sum 2 - 1 = 1, 3 visits.
    # Completed Q: visited a0 2, a1 -1; the mixed value for a2: priors 1/3 each,
    #   (raw 0 + 2 * ((1/3 * 2) / (2/3) + (1/3 * -1) / (2/3))) / 3 = (2 * 0.5) / 3 = 1/3.
    #   Rescaled by min -1, max 2: [1, 0, 4/9]; sigma = (50 + 1) * 0.1 * that = [5.1, 0, 2.2667].
    # action: most visited a0, a1 (1 each): g + logits + sigma = 5.6 vs 0.2 -> a0.
    # improved policy = softmax([5.1, 0, 5.1 * 4 / 9]).
    model = TableModel({(0, 0): (1.0, 2.0, [0, 0, 0]), (0, 1): (0.0, -2.0, [0, 0, 0])})
    cfg = MCTSConfig(num_simulations=2, discount=0.5, value_prefix=False)
    out = run_gumbel_mcts(np.zeros((1, 3), np.float32), np.zeros(1, np.float32), model, cfg,
                          np.array([[0.5, 0.2, 0.0]], np.float32), max_num_considered_actions=2)
    assert model.calls == [(0, 0, 1), (0, 1, 1)]
    np.testing.assert_array_equal(out.visit_counts, [[1, 1, 0]])
    assert out.action[0] == 0
    z = np.array([5.1, 0.0, 5.1 * 4 / 9])
    np.testing.assert_allclose(out.improved_policy[0], np.exp(z) / np.exp(z).sum(), rtol=1e-6)
    np.testing.assert_allclose(out.root_values, [1 / 3], rtol=1e-6)


def test_hand_illegal_actions_count_in_the_rescaling_as_in_mctx():
    # The same tree with a2 illegal and root value 10 (m = 16, so both legal actions are
    # considered): a2 takes the mixed value (10 + 2 * 0.5) / 3 = 11/3, outside [-1, 2], so it
    # widens the rescaling (mctx rescales over all actions of the root):
    # sigma(a0) = 5.1 * (2 + 1) / (11/3 + 1) = 5.1 * 9/14, sigma(a1) = 0, and the improved
    # policy over the legal actions is softmax([5.1 * 9/14, 0]), 0 for a2.
    model = TableModel({(0, 0): (1.0, 2.0, [0, 0, 0]), (0, 1): (0.0, -2.0, [0, 0, 0])})
    cfg = MCTSConfig(num_simulations=2, discount=0.5, value_prefix=False)
    out = run_gumbel_mcts(np.zeros((1, 3), np.float32), np.full(1, 10.0, np.float32), model, cfg,
                          np.array([[0.5, 0.2, 0.0]], np.float32),
                          np.array([[True, True, False]]))
    z = 5.1 * 9 / 14
    np.testing.assert_allclose(out.improved_policy[0], [1 / (1 + np.exp(-z)),
                                                        1 / (1 + np.exp(z)), 0.0], rtol=1e-6)
    np.testing.assert_allclose(out.root_values, [11 / 3], rtol=1e-6)


@pytest.mark.parametrize("value_scale,third_call", [(0.1, (1, 1, 2)), (0.0, (2, 1, 3))])
def test_hand_interior_selection(value_scale, third_call):
    # m = 1: every simulation goes through the root's best g + logits, a1 (logits [0, 1]).
    # Node 1 (logits [3, 0], value 0). sim 2, at node 1, no child visited: completed Q all
    #   equal (the raw value), sigma 0, pi = softmax([3, 0]) -> a0 (no visits to subtract).
    #   Node 2 = (1, a0): reward 0, value -1, discount 1: Q(a0) = -1.
    # sim 3, at node 1: N = 1; mixed = (0 + 1 * -1) / 2 = -0.5 for a1; completed [-1, -0.5],
    #   rescaled [0, 1], sigma = (50 + 1) * value_scale * that.
    #   value_scale 0.1: pi = softmax([3, 0 + 5.1]) = [0.109, 0.891]; scores
    #     [0.109 - 1/2, 0.891] -> a1, a new node from node 1: call (1, 1, depth 2).
    #   value_scale 0: pi = softmax([3, 0]) = [0.953, 0.047]; scores [0.953 - 0.5, 0.047] ->
    #     a0, descend to node 2 (logits [0, 2]: no visits, pi = softmax -> a1): call (2, 1, 3).
    model = TableModel({
        (0, 1): (0.0, 0.0, [3, 0]),
        (1, 0): (0.0, -1.0, [0, 2]),
        (1, 1): (0.0, 0.0, [0, 0]),
        (2, 1): (0.0, 0.0, [0, 0]),
    })
    cfg = MCTSConfig(num_simulations=3, discount=1.0, value_prefix=False)
    out = run_gumbel_mcts(np.array([[0.0, 1.0]], np.float32), np.zeros(1, np.float32), model, cfg,
                          np.zeros((1, 2), np.float32), max_num_considered_actions=1,
                          value_scale=value_scale)
    assert model.calls == [(0, 1, 1), (1, 0, 2), third_call]
    np.testing.assert_array_equal(out.visit_counts, [[0, 3]])
    assert out.action[0] == 1


def test_hand_value_prefix_rewards_and_reset():
    # Value-prefix mode, horizon 2, A = 1, discount 1, all values 0: prefixes 1, 3, 10 at
    # depths 1, 2, 3 give rewards 1 (parent depth 0: a reset), 3 - 1 = 2, and 10 (parent depth
    # 2: a reset). Root value = (0 + 1 + (1 + 2) + (1 + 2 + 10)) / 4 = 17 / 4.
    model = TableModel({(0, 0): (1.0, 0.0, [0]), (1, 0): (3.0, 0.0, [0]),
                        (2, 0): (10.0, 0.0, [0])})
    cfg = MCTSConfig(num_simulations=3, discount=1.0, value_prefix=True, lstm_horizon_len=2)
    out = run_gumbel_mcts(np.zeros((1, 1), np.float32), np.zeros(1, np.float32), model, cfg,
                          np.zeros((1, 1), np.float32))
    assert model.calls == [(0, 0, 1), (1, 0, 2), (2, 0, 3)]
    np.testing.assert_allclose(out.root_values, [17 / 4], rtol=1e-6)
    np.testing.assert_array_equal(out.improved_policy, [[1.0]])


def test_action_is_best_of_the_most_visited():
    # 3 simulations over 2 considered actions (schedule [0, 0, 1]): the third goes to the
    # better of the two by g + logits + sigma; the action is then that one (2 visits), even if
    # the other has the larger g + logits.
    model = TableModel({(0, 0): (0.0, -5.0, [0, 0]), (0, 1): (0.0, 5.0, [0, 0]),
                        (2, 0): (0.0, 5.0, [0, 0]), (1, 0): (0.0, -5.0, [0, 0])})
    cfg = MCTSConfig(num_simulations=3, discount=1.0, value_prefix=False)
    out = run_gumbel_mcts(np.zeros((1, 2), np.float32), np.zeros(1, np.float32), model, cfg,
                          np.array([[1.0, 0.0]], np.float32))
    # sim 1 -> a0 (g 1), Q -5; sim 2 -> a1, Q 5; sim 3: count 1: a0 1 + 0 vs a1 0 + 5.1 -> a1.
    assert [c[:2] for c in model.calls] == [(0, 0), (0, 1), (2, 0)]
    np.testing.assert_array_equal(out.visit_counts, [[1, 2]])
    assert out.action[0] == 1


def test_ties_go_to_the_lowest_action():
    # Equal logits, zero noise, flat model: every score ties at the root and below it; mctx's
    # argmax takes the first. 2 simulations visit a0 and a1; 6 simulations over 4 considered
    # actions (schedule [0, 0, 0, 0, 1, 1]) visit a0 and a1 twice, and the action is a0.
    zeros = np.zeros((1, 4), np.float32)
    out = run_gumbel_mcts(zeros, np.zeros(1, np.float32), flat_fn(4), MCTSConfig(num_simulations=2),
                          zeros)
    np.testing.assert_array_equal(out.visit_counts, [[1, 1, 0, 0]])
    model = TableModel({(p, a): (0.0, 0.0, [0, 0, 0, 0]) for p in range(7) for a in range(4)})
    out = run_gumbel_mcts(zeros, np.zeros(1, np.float32), model, MCTSConfig(num_simulations=6),
                          zeros)
    np.testing.assert_array_equal(out.visit_counts, [[2, 2, 1, 1]])
    # The second visits of a0 and a1 descend to nodes 1 and 2, whose first child is a0.
    assert model.calls == [(0, 0, 1), (0, 1, 1), (0, 2, 1), (0, 3, 1), (1, 0, 2), (2, 0, 2)]
    assert out.action[0] == 0


def test_scores_are_floored_at_minus_1e9_as_in_mctx():
    # mctx's `score_considered` floors g + (logits - max logit) + sigma at -1e9: actions far
    # below the best logit tie there, and the first of them wins. Logits [0, -3e9, -2e9],
    # 2 simulations over 3 considered actions: a0, then a1 (tied with a2 at the floor).
    logits = np.array([[0.0, -3e9, -2e9]], np.float32)
    zeros = np.zeros((1, 3), np.float32)
    out, _, _ = compare(logits, np.zeros(1, np.float32), zeros, None,
                        MCTSConfig(num_simulations=2), seed=0)
    np.testing.assert_array_equal(out.visit_counts, [[1, 1, 0]])
    np.testing.assert_array_equal(out.improved_policy, [[1.0, 0.0, 0.0]])


def test_single_legal_action_gets_every_visit():
    logits = np.zeros((2, 5), np.float32)
    legal = np.zeros((2, 5), bool)
    legal[0, 3] = legal[1, 0] = True
    gumbel = np.array([[9, 9, 9, -9, 9]] * 2, np.float32)
    out = run_gumbel_mcts(logits, np.zeros(2, np.float32), PathModel(0, 2, 5),
                          MCTSConfig(num_simulations=9), gumbel, legal)
    np.testing.assert_array_equal(out.visit_counts, [[0, 0, 0, 9, 0], [9, 0, 0, 0, 0]])
    np.testing.assert_array_equal(out.action, [3, 0])
    np.testing.assert_array_equal(out.improved_policy, legal.astype(np.float32))


# --------------------------------------------------------------------------------------------
# Properties.
# --------------------------------------------------------------------------------------------


def test_deterministic_and_inputs_not_modified():
    logits, values, gumbel, legal = make_case(4, 8, 6, True, 1.0)
    copies = [x.copy() for x in (logits, values, gumbel, legal)]
    cfg = MCTSConfig(num_simulations=20)
    a = run_gumbel_mcts(logits, values, PathModel(4, 8, 6), cfg, gumbel, legal)
    b = run_gumbel_mcts(logits, values, PathModel(4, 8, 6), cfg, gumbel, legal)
    for x, y in zip((logits, values, gumbel, legal), copies, strict=True):
        np.testing.assert_array_equal(x, y)
    for field in ("action", "improved_policy", "visit_counts", "root_values"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_accepts_other_float_dtypes_and_integer_masks():
    logits, values, gumbel, legal = make_case(5, 3, 4, True, 1.0)
    cfg = MCTSConfig(num_simulations=10)
    base = run_gumbel_mcts(logits, values, PathModel(5, 3, 4), cfg, gumbel, legal)

    inner = PathModel(5, 3, 4)

    def fn64(p, a, d):
        vp, v, lg = inner(p, a, d)
        return vp.astype(np.float64), v.astype(np.float64), np.asfortranarray(lg)

    other = run_gumbel_mcts(logits.astype(np.float64), values.astype(np.float64), fn64, cfg,
                            gumbel.astype(np.float64), legal.astype(np.int64))
    np.testing.assert_array_equal(base.visit_counts, other.visit_counts)
    np.testing.assert_array_equal(base.action, other.action)


def test_exports():
    assert {"run_gumbel_mcts", "GumbelSearchOutput", "Q_NORMALIZATIONS"} <= set(cython_mcts.__all__)
    assert cython_mcts.Q_NORMALIZATIONS == ("node", "tree")


def test_greedy_zero_noise_large_budget_concentrates_on_best_q():
    # With zero noise, a clearly better action (value +1 vs -1 elsewhere) and enough
    # simulations, sequential halving ends on it, and the improved policy favours it.
    num_actions = 4

    def fn(parent_ids, actions, depths):
        n = len(parent_ids)
        value = np.where((depths == 1) & (actions == 2), 1.0, -1.0).astype(np.float32)
        return np.zeros(n, np.float32), value, np.zeros((n, num_actions), np.float32)

    out = run_gumbel_mcts(np.zeros((1, num_actions), np.float32), np.zeros(1, np.float32), fn,
                          MCTSConfig(num_simulations=32, discount=1.0, value_prefix=False),
                          np.zeros((1, num_actions), np.float32))
    assert out.action[0] == 2
    assert out.visit_counts[0, 2] == out.visit_counts.max()
    assert out.improved_policy[0, 2] > 0.99


# --------------------------------------------------------------------------------------------
# Errors.
# --------------------------------------------------------------------------------------------

B, A = 3, 4


def good_fn(parent_ids, actions, depths):
    n = len(parent_ids)
    return np.zeros(n, np.float32), np.zeros(n, np.float32), np.zeros((n, A), np.float32)


def good_args(**overrides):
    args = dict(root_logits=np.zeros((B, A), np.float32), root_values=np.zeros(B, np.float32),
                recurrent_fn=good_fn, config=MCTSConfig(num_simulations=3),
                gumbel=np.zeros((B, A), np.float32))
    args.update(overrides)
    return args


@pytest.mark.parametrize("kwargs,match", [
    (dict(root_logits=np.zeros((B,), np.float32)), "root_logits"),
    (dict(root_logits=np.zeros((B, A, 1), np.float32)), "root_logits"),
    (dict(root_logits=np.zeros((0, A), np.float32), root_values=np.zeros(0, np.float32),
          gumbel=np.zeros((0, A), np.float32)), "root_logits"),
    (dict(root_logits=np.zeros((B, 0), np.float32), gumbel=np.zeros((B, 0), np.float32)),
     "root_logits"),
    (dict(root_logits=np.zeros((B, A), np.int32)), "root_logits"),
    (dict(root_logits=np.full((B, A), np.nan, np.float32)), "root_logits"),
    (dict(root_logits=np.full((B, A), -np.inf, np.float32)), "root_logits"),
    (dict(root_logits=np.full((B, A), 1e300)), "root_logits"),
    (dict(root_logits="abc"), "root_logits"),
    (dict(root_values=np.zeros((B, 1), np.float32)), "root_values"),
    (dict(root_values=np.zeros(B + 1, np.float32)), "root_values"),
    (dict(root_values=np.array([0, 0, np.nan], np.float32)), "root_values"),
    (dict(root_values=np.zeros(B, bool)), "root_values"),
    (dict(gumbel=np.zeros((B, A + 1), np.float32)), "gumbel"),
    (dict(gumbel=np.zeros((B,), np.float32)), "gumbel"),
    (dict(gumbel=np.zeros((B, A), np.int32)), "gumbel"),
    (dict(gumbel=np.array([[0, 0, 0, np.nan]] * B, np.float32)), "gumbel"),
    (dict(gumbel=np.array([[0, 0, np.inf, 0]] * B, np.float32)), "gumbel"),
    (dict(gumbel=np.full((B, A), -1e300)), "gumbel"),
    (dict(gumbel=None), "gumbel"),
    (dict(legal_actions=np.ones((B, A + 1), bool)), "legal_actions"),
    (dict(legal_actions=np.ones((B, A), np.float32)), "legal_actions"),
    (dict(legal_actions=np.full((B, A), 2, np.int64)), "legal_actions"),
    (dict(legal_actions=np.array([[True] * A, [False] * A, [True] * A])), "no legal action"),
    (dict(recurrent_fn=None), "recurrent_fn"),
    (dict(recurrent_fn=42), "recurrent_fn"),
    (dict(config=dict(num_simulations=5)), "config"),
    (dict(max_num_considered_actions=0), "max_num_considered_actions"),
    (dict(max_num_considered_actions=-2), "max_num_considered_actions"),
    (dict(max_num_considered_actions=2.0), "max_num_considered_actions"),
    (dict(max_num_considered_actions=True), "max_num_considered_actions"),
    (dict(max_num_considered_actions="4"), "max_num_considered_actions"),
    (dict(max_num_considered_actions=None), "max_num_considered_actions"),
    (dict(value_scale=-0.1), "value_scale"),
    (dict(value_scale=math.nan), "value_scale"),
    (dict(value_scale=math.inf), "value_scale"),
    (dict(value_scale=True), "value_scale"),
    (dict(value_scale="0.1"), "value_scale"),
    (dict(value_scale=1e307), "value_scale"),  # finite, but sigma's scale overflows
    (dict(maxvisit_init=-1.0), "maxvisit_init"),
    (dict(maxvisit_init=math.inf), "maxvisit_init"),
    (dict(maxvisit_init=None), "maxvisit_init"),
    (dict(q_normalization="global"), "q_normalization"),
    (dict(q_normalization=None), "q_normalization"),
])
def test_input_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        run_gumbel_mcts(**good_args(**kwargs))


def test_good_args_run_and_numpy_scalar_settings():
    out = run_gumbel_mcts(**good_args(max_num_considered_actions=np.int64(2),
                                      value_scale=np.float32(0.5), maxvisit_init=np.int32(10)))
    assert out.visit_counts.sum() == 3 * B
    huge = run_gumbel_mcts(**good_args(max_num_considered_actions=10**30))
    default = run_gumbel_mcts(**good_args())
    np.testing.assert_array_equal(huge.visit_counts, default.visit_counts)


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
        elif kind == "vp_int":
            vp = np.zeros(n, np.int64)
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
        return vp, v, lg
    return fn


@pytest.mark.parametrize("kind,match", [
    ("vp_shape", "value_prefix"), ("v_shape", "value"), ("lg_shape", "logits"),
    ("vp_int", "value_prefix"), ("vp_nan", "value_prefix"), ("v_inf", "value"),
    ("lg_nan", "logits"), ("v_overflow", "value"), ("none", "recurrent_fn"),
    ("pair", "recurrent_fn"),
])
def test_recurrent_output_errors(kind, match):
    with pytest.raises(ValueError, match=match):
        run_gumbel_mcts(**good_args(recurrent_fn=_bad_output(kind)))


def test_exceptions_from_recurrent_fn_propagate():
    def fn(parent_ids, actions, depths):
        raise KeyError("model failed")

    with pytest.raises(KeyError, match="model failed"):
        run_gumbel_mcts(**good_args(recurrent_fn=fn))


def test_root_values_that_overflow_are_an_error_naming_the_roots():
    big = 3e38

    def recurrent_fn(parent_ids, actions, depths):
        huge = np.where(np.arange(3) == 1, big, 0.5).astype(np.float32)
        return huge, huge, np.zeros((3, 2), np.float32)

    with pytest.raises(ValueError, match=r"root\(s\) \[1\] is not finite"):
        run_gumbel_mcts(np.zeros((3, 2), np.float32), np.array([0.0, big, 0.0], np.float32),
                        recurrent_fn, MCTSConfig(num_simulations=4, discount=0.997),
                        np.zeros((3, 2), np.float32))


def test_low_level_search_rechecks_its_arguments():
    # The compiled entry point is reachable from Python: bad arguments raise, never crash.
    from cython_mcts._tree import gumbel_search

    logits, values = np.zeros((B, A), np.float32), np.zeros(B, np.float32)
    gumbel = np.zeros((B, A), np.float32)
    legal = np.ones((B, A), np.uint8)
    ncons = np.full(B, 2, np.int32)
    table = cython_mcts._considered_visit_table(3, 3)
    args = [logits, values, good_fn, 3, 0.9, True, 5, gumbel, legal, ncons, table, 0.1, 50.0]
    gumbel_search(*args)  # fine
    partial_legal = legal.copy()
    partial_legal[1] = [0, 0, 0, 1]
    for index, bad in [(0, logits[:, ::2]), (0, logits.astype(np.float64)), (1, values[:2]),
                       (7, gumbel[:, :2]), (7, gumbel.astype(np.float64)),
                       (8, legal.astype(bool)), (8, np.zeros((B, A), np.uint8)),
                       (8, legal * 2), (8, partial_legal),
                       (3, 0), (6, 0), (2, None), (9, ncons[:2]), (9, ncons.astype(np.int64)),
                       (9, np.zeros(B, np.int32)), (9, np.full(B, 3, np.int32)),
                       (10, table[:, :2]), (10, table[:1]), (10, table.astype(np.int64)),
                       (10, np.full((3, 3), 3, np.int32)), (10, np.full((3, 3), -1, np.int32)),
                       (11, -0.1), (11, math.nan), (12, math.inf)]:
        broken = list(args)
        broken[index] = bad
        with pytest.raises(ValueError):
            gumbel_search(*broken)
