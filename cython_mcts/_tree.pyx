# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""Compiled batched MCTS: the search loops of `cython_mcts.run_mcts` (pUCT, `search`) and of
`cython_mcts.run_gumbel_mcts` (Gumbel MuZero, `gumbel_search`, at the end of this file; it shares
the tree layout and the checks of `recurrent_fn`'s outputs, and has no tie generator).

Every root `b` owns `M = num_simulations + 1` node slots; node `s` of root `b` is the node made
by simulation `s` (node 0 is the root), so a node's id is also the id of its hidden state that
the caller keeps. All node data lives in flat preallocated arrays indexed by `b * M + node`
(per-node scalars) or `(b * M + node) * A + action` (per-edge data). Selection, expansion and
backup run in C without the GIL; per simulation the only Python work is one call of
`recurrent_fn` and a few C-API checks on what it returns.

Arithmetic is done in double precision in a fixed operation order (MuZero's pseudocode order);
the pure-Python reference in `tests/mcts_reference.py` uses the same order and the same tie
generator (below), so the two agree bit for bit, tie draws included. (That holds for the default
build: SSE2 doubles, no -ffast-math; a build that contracts a*b+c into FMA may differ from the
reference in the last bit, which can only move a score across the tie tolerance.)

Tie-breaking generator (the contract the reference reproduces; all arithmetic mod 2**64):

    GOLDEN = 0x9E3779B97F4A7C15
    mix(z):  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
             z = (z ^ (z >> 27)) * 0x94D049BB133111EB
             return z ^ (z >> 31)                       # splitmix64's output function
    initial state of root b:  h = mix(seed[b] + GOLDEN);  state_b = mix(h + (b + 1) * GOLDEN)
             (seed[b]: root b's seed; one int seed is the same for every root)
    next():  state_b = state_b + GOLDEN;  return mix(state_b)      # one splitmix64 step
    below(n), n >= 2:  t = (2**64 - n) % n  (= 2**64 mod n);
             repeat x = next() until x >= t;  return x % n         # unbiased, by rejection

At every selection step, the candidates are the node's actions (at the root: its legal actions
only). With `best` the highest score, the tied candidates are those with
`score >= best - 1e-6` (double arithmetic), in ascending action order; if there is one it is
taken without a draw, otherwise the `below(n_tied)`-th of them (0-based). Each root draws only
from its own stream, in the order of its own selection steps.

Inputs are validated in `cython_mcts/__init__.py`; this module trusts their shapes and dtypes
(they are checked again cheaply here so that nothing reachable from Python can read out of
bounds), and validates the outputs of `recurrent_fn` itself.
"""

import numpy as np

cimport numpy as cnp
from libc.math cimport INFINITY, exp, isfinite, log, sqrt
from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t

cnp.import_array()

ctypedef cnp.npy_intp intp

# Tie-breaking generator (see the module docstring); plain C so that it is exact mod 2**64.
cdef extern from *:
    """
    #include <stdint.h>
    #define BZ_GOLDEN 0x9E3779B97F4A7C15ULL
    #define BZ_TIE_TOLERANCE 1e-6  /* scores within this of the best are tied */
    static inline uint64_t bz_mix64(uint64_t z) {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        return z ^ (z >> 31);
    }
    static inline uint64_t bz_root_state(uint64_t seed, uint64_t b) {
        uint64_t h = bz_mix64(seed + BZ_GOLDEN);
        return bz_mix64(h + (b + 1) * BZ_GOLDEN);
    }
    static inline uint64_t bz_next(uint64_t *state) {
        *state += BZ_GOLDEN;
        return bz_mix64(*state);
    }
    static inline uint64_t bz_below(uint64_t *state, uint64_t n) {
        uint64_t t = (0 - n) % n;  /* 2**64 mod n */
        uint64_t x;
        do {
            x = bz_next(state);
        } while (x < t);
        return x % n;
    }
    """
    uint64_t bz_root_state(uint64_t seed, uint64_t b) noexcept nogil
    uint64_t bz_below(uint64_t* state, uint64_t n) noexcept nogil
    const double BZ_TIE_TOLERANCE


cdef struct Search:
    # Sizes and settings.
    intp B
    intp A
    intp M                      # node slots per root (num_simulations + 1)
    double discount
    double pb_c_base
    double pb_c_init
    double value_delta_max
    bint value_prefix
    intp horizon
    # Per edge [B, M, A].
    int32_t* child              # node id of the child, 0 when not expanded
    double* prior
    # Per node [B, M].
    int32_t* visits
    double* value_sum
    double* reward              # reward on the edge into the node (0 for the root)
    double* prefix              # value prefix as returned by recurrent_fn (0 for the root)
    int32_t* depth
    int32_t* parent
    # Per root [B]: min-max statistics (over non-root nodes; empty = [+inf, -inf]), the leaf
    # chosen by the last selection and the tie generator's state.
    double* vmin
    double* vmax
    int32_t* pend_parent
    int32_t* pend_action
    uint64_t* rng
    uint8_t* legal              # [B, A] root legal mask
    double* qbuf                # [A] scratch: Q of visited children
    int32_t* tbuf               # [A] scratch: tied actions


cdef inline double minmax_normalize(double lo, double hi, double delta_floor,
                                    double q) noexcept nogil:
    """(q - lo) / max(hi - lo, delta_floor) clipped to [0, 1] (q itself, clipped, while hi <= lo,
    e.g. empty statistics). Shared by the pUCT search and the Gumbel search's "tree" mode."""
    cdef double delta
    if hi > lo:
        delta = hi - lo
        if delta < delta_floor:
            delta = delta_floor
        q = (q - lo) / delta
    if q < 0.0:
        q = 0.0
    if q > 1.0:
        q = 1.0
    return q


cdef inline double normalize(const Search* st, intp b, double q) noexcept nogil:
    """Q normalised by root b's min-max statistics (`minmax_normalize`)."""
    return minmax_normalize(st.vmin[b], st.vmax[b], st.value_delta_max, q)


cdef inline void update_minmax(Search* st, intp b, double q) noexcept nogil:
    if q < st.vmin[b]:
        st.vmin[b] = q
    if q > st.vmax[b]:
        st.vmax[b] = q


cdef inline double child_score(const Search* st, intp b, intp base_node, intp edge, intp a,
                               double m_n, double pb_c, double sqrt_n) noexcept nogil:
    """pUCT score of action `a` of the node whose edges start at `edge` (qbuf holds the Q of
    its visited children, m_n the normalised mean Q for unvisited ones)."""
    cdef int32_t c = st.child[edge + a]
    cdef int32_t n = 0
    cdef double qn = m_n
    if c != 0:
        qn = normalize(st, b, st.qbuf[a])
        n = st.visits[base_node + c]
    return qn + (pb_c * (sqrt_n / (n + 1.0))) * st.prior[edge + a]


cdef void select_leaf(Search* st, intp b) noexcept nogil:
    """Descends root `b` to an unexpanded edge; stores it in pend_parent/pend_action."""
    cdef intp A = st.A
    cdef intp base_node = b * st.M
    cdef intp node = 0
    cdef intp edge, a, best_a, ci
    cdef int32_t c
    cdef int count, n_tied
    cdef double mean_q = 0.0
    cdef double sum_q, q, m_n, parent_n, pb_c, sqrt_n, score, best, second, threshold, lo
    cdef bint at_root
    while True:
        edge = (base_node + node) * A
        # Q of the visited (expanded) children and the mean Q used for unvisited ones.
        sum_q = 0.0
        count = 0
        for a in range(A):
            c = st.child[edge + a]
            if c != 0:
                ci = base_node + c
                q = st.reward[ci] + st.discount * (st.value_sum[ci] / st.visits[ci])
                st.qbuf[a] = q
                sum_q = sum_q + q
                count += 1
        if node == 0:
            if count > 0:
                mean_q = sum_q / count
            else:
                mean_q = 0.0
        else:
            mean_q = (mean_q + sum_q) / (1 + count)
        m_n = normalize(st, b, mean_q)
        parent_n = <double>st.visits[base_node + node]
        pb_c = log((parent_n + st.pb_c_base + 1.0) / st.pb_c_base) + st.pb_c_init
        sqrt_n = sqrt(parent_n)
        at_root = node == 0
        # Best and second-best score (with multiplicity) over the candidates.
        best = -INFINITY
        second = -INFINITY
        best_a = 0              # stays 0 only if no candidate: unreachable (checked upstream)
        for a in range(A):
            if at_root and not st.legal[b * A + a]:
                continue
            score = child_score(st, b, base_node, edge, a, m_n, pb_c, sqrt_n)
            # second = max(second, min(score, best)): branch-free (min/max instructions).
            lo = score if score < best else best
            second = lo if lo > second else second
            if score > best:
                best = score
                best_a = a
        # Ties: every candidate within BZ_TIE_TOLERANCE of the best, one drawn from root b's
        # stream. There are at least two exactly when the second best is within it; then the
        # scores are recomputed (the same arithmetic, so the same values) to list them.
        threshold = best - BZ_TIE_TOLERANCE
        if second >= threshold:
            n_tied = 0
            for a in range(A):
                if at_root and not st.legal[b * A + a]:
                    continue
                if child_score(st, b, base_node, edge, a, m_n, pb_c, sqrt_n) >= threshold:
                    st.tbuf[n_tied] = <int32_t>a
                    n_tied += 1
            if n_tied > 1:
                best_a = st.tbuf[bz_below(&st.rng[b], <uint64_t>n_tied)]
        c = st.child[edge + best_a]
        if c == 0:
            st.pend_parent[b] = <int32_t>node
            st.pend_action[b] = <int32_t>best_a
            return
        node = c


cdef void expand_backup(Search* st, intp b, intp sim, const float* vp, const float* val,
                        const float* logits) noexcept nogil:
    """Makes node `sim` of root `b` from the pending edge, then backs its value up to the root."""
    cdef intp A = st.A
    cdef intp base_node = b * st.M
    cdef intp p = st.pend_parent[b]
    cdef intp a = st.pend_action[b]
    cdef intp ni = base_node + sim
    cdef intp pi = base_node + p
    cdef intp k, node, i
    cdef double r, mx, total, e, v, q
    cdef double* pr
    cdef const float* lg
    st.child[pi * A + a] = <int32_t>sim
    st.parent[ni] = <int32_t>p
    st.depth[ni] = st.depth[pi] + 1
    r = <double>vp[b]
    st.prefix[ni] = r
    if st.value_prefix and (st.depth[pi] % st.horizon) != 0:
        r = r - st.prefix[pi]
    st.reward[ni] = r
    # Priors of the new node: softmax of its logits over all actions.
    lg = logits + b * A
    pr = st.prior + ni * A
    mx = <double>lg[0]
    for k in range(1, A):
        if <double>lg[k] > mx:
            mx = <double>lg[k]
    total = 0.0
    for k in range(A):
        e = exp(<double>lg[k] - mx)
        pr[k] = e
        total = total + e
    for k in range(A):
        pr[k] = pr[k] / total
    # Backup, leaf to root (MuZero's pseudocode); the root's Q stays out of the min-max
    # statistics (EfficientZero).
    v = <double>val[b]
    node = sim
    while True:
        i = base_node + node
        st.value_sum[i] = st.value_sum[i] + v
        st.visits[i] = st.visits[i] + 1
        if node == 0:
            break
        q = st.reward[i] + st.discount * (st.value_sum[i] / st.visits[i])
        update_minmax(st, b, q)
        v = st.reward[i] + st.discount * v
        node = st.parent[i]


cdef intp first_nonfinite(const float* x, intp n) noexcept nogil:
    cdef intp i
    for i in range(n):
        if not isfinite(x[i]):
            return i
    return -1


cdef inline bint _is_plain_f32(object obj):
    return (cnp.PyArray_CheckExact(obj)
            and cnp.PyArray_TYPE(<cnp.ndarray>obj) == cnp.NPY_FLOAT32
            and cnp.PyArray_ISCARRAY_RO(<cnp.ndarray>obj))


cdef cnp.ndarray _output_f32(object obj, str name, intp B, intp A):
    """`recurrent_fn`'s output `name` as a C-contiguous float32 array of shape [B] (A < 0) or [B, A].

    Fast path: already such an array (no copy). Otherwise any real floating array is converted.
    """
    cdef cnp.ndarray arr
    cdef str expected = f"float32 [B={B}]" if A < 0 else f"float32 [B={B}, A={A}]"
    if _is_plain_f32(obj):
        arr = <cnp.ndarray>obj
    else:
        try:
            tmp = np.asarray(obj)
        except Exception as exc:  # e.g. a CUDA tensor
            raise ValueError(
                f"recurrent_fn must return ({name}, ...) as an array of {expected}; "
                f"could not convert a {type(obj).__name__}: {exc}") from exc
        if tmp.dtype.kind != "f":
            raise ValueError(
                f"recurrent_fn output {name} must be {expected}, got dtype {tmp.dtype}")
        with np.errstate(over="ignore"):  # float64 overflow -> inf, refused below
            arr = np.ascontiguousarray(tmp, dtype=np.float32)
    if A < 0:
        if cnp.PyArray_NDIM(arr) != 1 or cnp.PyArray_DIMS(arr)[0] != B:
            raise ValueError(
                f"recurrent_fn output {name} must be {expected}, got shape "
                f"{(<object>arr).shape}")
    else:
        if (cnp.PyArray_NDIM(arr) != 2 or cnp.PyArray_DIMS(arr)[0] != B
                or cnp.PyArray_DIMS(arr)[1] != A):
            raise ValueError(
                f"recurrent_fn output {name} must be {expected}, got shape "
                f"{(<object>arr).shape}")
    return arr



cdef tuple _leaf_outputs(object recurrent_fn, const int32_t* pend_parent,
                         const int32_t* pend_action, const int32_t* depth, intp B, intp A,
                         intp M, intp sim):
    """Calls `recurrent_fn` once for the pending leaf of every root (simulation `sim`).

    The leaf of root b is child `pend_action[b]` of node `pend_parent[b]`; `depth` is the node
    depth table [B, M]. Returns its outputs (value_prefix float32[B], value float32[B], logits
    float32[B, A]) as C-contiguous arrays, after checking shapes and finiteness.
    """
    cdef cnp.npy_intp dims[1]
    dims[0] = B
    # Fresh arrays each call: the callback may keep them.
    cdef cnp.ndarray parent_ids = <cnp.ndarray>cnp.PyArray_EMPTY(1, dims, cnp.NPY_INT64, 0)
    cdef cnp.ndarray actions = <cnp.ndarray>cnp.PyArray_EMPTY(1, dims, cnp.NPY_INT64, 0)
    cdef cnp.ndarray depths = <cnp.ndarray>cnp.PyArray_EMPTY(1, dims, cnp.NPY_INT64, 0)
    cdef int64_t* pid_p = <int64_t*>cnp.PyArray_DATA(parent_ids)
    cdef int64_t* act_p = <int64_t*>cnp.PyArray_DATA(actions)
    cdef int64_t* dep_p = <int64_t*>cnp.PyArray_DATA(depths)
    cdef intp b
    for b in range(B):
        pid_p[b] = pend_parent[b]
        act_p[b] = pend_action[b]
        dep_p[b] = depth[b * M + pend_parent[b]] + 1
    result = recurrent_fn(parent_ids, actions, depths)
    try:
        out_vp, out_val, out_lg = result
    except (TypeError, ValueError) as exc:
        raise ValueError(
            "recurrent_fn must return a tuple (value_prefix float32[B], value float32[B], "
            f"logits float32[B, A]); got {type(result).__name__}") from exc
    cdef cnp.ndarray vp_arr = _output_f32(out_vp, "value_prefix", B, -1)
    cdef cnp.ndarray val_arr = _output_f32(out_val, "value", B, -1)
    cdef cnp.ndarray lg_arr = _output_f32(out_lg, "logits", B, A)
    cdef const float* vp_p = <const float*>cnp.PyArray_DATA(vp_arr)
    cdef const float* val_p = <const float*>cnp.PyArray_DATA(val_arr)
    cdef const float* lg_p = <const float*>cnp.PyArray_DATA(lg_arr)
    cdef intp bad_vp, bad_val, bad_lg
    with nogil:
        bad_vp = first_nonfinite(vp_p, B)
        bad_val = first_nonfinite(val_p, B)
        bad_lg = first_nonfinite(lg_p, B * A)
    if bad_vp >= 0 or bad_val >= 0 or bad_lg >= 0:
        if bad_vp >= 0:
            name, where = "value_prefix", f"[{bad_vp}]"
        elif bad_val >= 0:
            name, where = "value", f"[{bad_val}]"
        else:
            name, where = "logits", f"[{bad_lg // A}, {bad_lg % A}]"
        raise ValueError(
            f"recurrent_fn output {name} has a non-finite value at {where} (simulation {sim})")
    return vp_arr, val_arr, lg_arr

cdef cnp.ndarray _buffer(intp n, object dtype):
    return np.zeros(n, dtype=dtype)


def search(cnp.ndarray root_logits, cnp.ndarray root_values, object recurrent_fn,
           intp num_simulations, double discount, double pb_c_base, double pb_c_init,
           double root_exploration_fraction, bint value_prefix, intp lstm_horizon_len,
           double value_delta_max, object noise, cnp.ndarray legal, object seed):
    """Runs the batched search. Low level: use `cython_mcts.run_mcts`, which validates inputs.

    Args:
        root_logits: float32 [B, A], C-contiguous, finite.
        root_values: float32 [B], C-contiguous, finite.
        recurrent_fn: (parent_ids int64[B], actions int64[B], depths int64[B])
            -> (value_prefix float32[B], value float32[B], logits float32[B, A]).
        noise: float32 [B, A] C-contiguous, finite, >= 0, positive on some legal action; or None.
        legal: uint8 [B, A] C-contiguous (0/1), at least one 1 per row.
        seed: uint64 [B] C-contiguous, root b's tie generator seed.

    Returns:
        (visit_counts int32 [B, A], root_values float32 [B]).
    """
    # Defensive re-checks: the Python layer validates, but nothing here may read out of bounds.
    if not _is_plain_f32(root_logits) or cnp.PyArray_NDIM(root_logits) != 2:
        raise ValueError("root_logits must be a C-contiguous float32 [B, A] array")
    cdef intp B = cnp.PyArray_DIMS(root_logits)[0]
    cdef intp A = cnp.PyArray_DIMS(root_logits)[1]
    if B < 1 or A < 1:
        raise ValueError(f"root_logits must have B >= 1 and A >= 1, got shape ({B}, {A})")
    if (not _is_plain_f32(root_values) or cnp.PyArray_NDIM(root_values) != 1
            or cnp.PyArray_DIMS(root_values)[0] != B):
        raise ValueError(f"root_values must be a C-contiguous float32 [B={B}] array")
    if (not cnp.PyArray_CheckExact(legal) or cnp.PyArray_TYPE(legal) != cnp.NPY_UINT8
            or not cnp.PyArray_ISCARRAY_RO(legal) or cnp.PyArray_NDIM(legal) != 2
            or cnp.PyArray_DIMS(legal)[0] != B or cnp.PyArray_DIMS(legal)[1] != A):
        raise ValueError(f"legal must be a C-contiguous uint8 [B={B}, A={A}] array")
    if noise is not None and (not _is_plain_f32(noise) or cnp.PyArray_NDIM(noise) != 2
                              or cnp.PyArray_DIMS(noise)[0] != B
                              or cnp.PyArray_DIMS(noise)[1] != A):
        raise ValueError(f"noise must be None or a C-contiguous float32 [B={B}, A={A}] array")
    if num_simulations < 1 or num_simulations >= 2**31 - 1:
        raise ValueError(f"num_simulations must be in [1, 2**31 - 2], got {num_simulations}")
    if lstm_horizon_len < 1:
        raise ValueError(f"lstm_horizon_len must be >= 1, got {lstm_horizon_len}")
    if not callable(recurrent_fn):
        raise ValueError("recurrent_fn must be callable")
    if (not cnp.PyArray_CheckExact(seed) or cnp.PyArray_TYPE(<cnp.ndarray>seed) != cnp.NPY_UINT64
            or not cnp.PyArray_ISCARRAY_RO(<cnp.ndarray>seed)
            or cnp.PyArray_NDIM(<cnp.ndarray>seed) != 1
            or cnp.PyArray_DIMS(<cnp.ndarray>seed)[0] != B):
        raise ValueError(f"seed must be a C-contiguous uint64 [B={B}] array")
    cdef const uint64_t* seed_p = <const uint64_t*>cnp.PyArray_DATA(<cnp.ndarray>seed)

    cdef intp M = num_simulations + 1
    cdef intp b, a, i, sim, bad
    cdef const uint8_t* legal_p = <const uint8_t*>cnp.PyArray_DATA(legal)
    cdef const float* rl = <const float*>cnp.PyArray_DATA(root_logits)
    cdef const float* rv = <const float*>cnp.PyArray_DATA(root_values)
    cdef const float* nz = NULL
    cdef int c
    for b in range(B):
        c = 0
        for a in range(A):
            c |= legal_p[b * A + a]
        if not c:
            raise ValueError(f"legal_actions: root {b} has no legal action")
    if noise is not None:
        nz = <const float*>cnp.PyArray_DATA(<cnp.ndarray>noise)

    # Preallocated storage for the whole search (numpy owns the memory; zero-initialised).
    cdef cnp.ndarray child_a = _buffer(B * M * A, np.int32)
    cdef cnp.ndarray prior_a = _buffer(B * M * A, np.float64)
    cdef cnp.ndarray visits_a = _buffer(B * M, np.int32)
    cdef cnp.ndarray vsum_a = _buffer(B * M, np.float64)
    cdef cnp.ndarray reward_a = _buffer(B * M, np.float64)
    cdef cnp.ndarray prefix_a = _buffer(B * M, np.float64)
    cdef cnp.ndarray depth_a = _buffer(B * M, np.int32)
    cdef cnp.ndarray parent_a = _buffer(B * M, np.int32)
    cdef cnp.ndarray vmin_a = _buffer(B, np.float64)
    cdef cnp.ndarray vmax_a = _buffer(B, np.float64)
    cdef cnp.ndarray pp_a = _buffer(B, np.int32)
    cdef cnp.ndarray pa_a = _buffer(B, np.int32)
    cdef cnp.ndarray legal_copy = np.array(legal, dtype=np.uint8, copy=True)
    cdef cnp.ndarray qbuf_a = _buffer(A, np.float64)
    cdef cnp.ndarray tbuf_a = _buffer(A, np.int32)
    cdef cnp.ndarray rng_a = _buffer(B, np.uint64)

    cdef Search st
    st.B = B
    st.A = A
    st.M = M
    st.discount = discount
    st.pb_c_base = pb_c_base
    st.pb_c_init = pb_c_init
    st.value_delta_max = value_delta_max
    st.value_prefix = value_prefix
    st.horizon = lstm_horizon_len
    st.child = <int32_t*>cnp.PyArray_DATA(child_a)
    st.prior = <double*>cnp.PyArray_DATA(prior_a)
    st.visits = <int32_t*>cnp.PyArray_DATA(visits_a)
    st.value_sum = <double*>cnp.PyArray_DATA(vsum_a)
    st.reward = <double*>cnp.PyArray_DATA(reward_a)
    st.prefix = <double*>cnp.PyArray_DATA(prefix_a)
    st.depth = <int32_t*>cnp.PyArray_DATA(depth_a)
    st.parent = <int32_t*>cnp.PyArray_DATA(parent_a)
    st.vmin = <double*>cnp.PyArray_DATA(vmin_a)
    st.vmax = <double*>cnp.PyArray_DATA(vmax_a)
    st.pend_parent = <int32_t*>cnp.PyArray_DATA(pp_a)
    st.pend_action = <int32_t*>cnp.PyArray_DATA(pa_a)
    st.legal = <uint8_t*>cnp.PyArray_DATA(legal_copy)
    st.qbuf = <double*>cnp.PyArray_DATA(qbuf_a)
    st.tbuf = <int32_t*>cnp.PyArray_DATA(tbuf_a)
    st.rng = <uint64_t*>cnp.PyArray_DATA(rng_a)

    cdef double frac = root_exploration_fraction
    cdef double mx, total, e, v0, nsum
    cdef double* pr
    with nogil:
        for b in range(B):
            # Root priors: softmax over the legal actions, then the noise (renormalised over the
            # legal actions) mixed in.
            pr = st.prior + (b * M) * A
            mx = 0.0
            c = 0
            for a in range(A):
                if st.legal[b * A + a] and (c == 0 or <double>rl[b * A + a] > mx):
                    mx = <double>rl[b * A + a]
                    c = 1
            total = 0.0
            for a in range(A):
                if st.legal[b * A + a]:
                    e = exp(<double>rl[b * A + a] - mx)
                    pr[a] = e
                    total = total + e
                else:
                    pr[a] = 0.0
            for a in range(A):
                if st.legal[b * A + a]:
                    pr[a] = pr[a] / total
            if nz != NULL:
                nsum = 0.0
                for a in range(A):
                    if st.legal[b * A + a]:
                        nsum = nsum + <double>nz[b * A + a]
                if nsum > 0.0:
                    for a in range(A):
                        if st.legal[b * A + a]:
                            pr[a] = (1.0 - frac) * pr[a] + frac * (<double>nz[b * A + a] / nsum)
            # The root as if its predicted value had been backed up once; its Q stays out of
            # the min-max statistics, which start empty.
            v0 = <double>rv[b]
            st.visits[b * M] = 1
            st.value_sum[b * M] = v0
            st.vmin[b] = INFINITY
            st.vmax[b] = -INFINITY
            st.rng[b] = bz_root_state(seed_p[b], <uint64_t>b)
            select_leaf(&st, b)

    cdef cnp.ndarray vp_arr, val_arr, lg_arr
    cdef const float* vp_p
    cdef const float* val_p
    cdef const float* lg_p
    for sim in range(1, M):
        vp_arr, val_arr, lg_arr = _leaf_outputs(recurrent_fn, st.pend_parent, st.pend_action,
                                                st.depth, B, A, M, sim)
        vp_p = <const float*>cnp.PyArray_DATA(vp_arr)
        val_p = <const float*>cnp.PyArray_DATA(val_arr)
        lg_p = <const float*>cnp.PyArray_DATA(lg_arr)
        with nogil:
            for b in range(B):
                expand_backup(&st, b, sim, vp_p, val_p, lg_p)
                if sim + 1 < M:
                    select_leaf(&st, b)

    cdef cnp.ndarray counts = np.zeros((B, A), dtype=np.int32)
    cdef cnp.ndarray values = np.empty(B, dtype=np.float32)
    cdef int32_t* counts_p = <int32_t*>cnp.PyArray_DATA(counts)
    cdef float* values_p = <float*>cnp.PyArray_DATA(values)
    cdef int32_t ch
    with nogil:
        for b in range(B):
            for a in range(A):
                ch = st.child[(b * M) * A + a]
                if ch != 0:
                    counts_p[b * A + a] = st.visits[b * M + ch]
            values_p[b] = <float>(st.value_sum[b * M] / st.visits[b * M])
    return counts, values


# ============================================================================================
# Gumbel MuZero root search (`cython_mcts.run_gumbel_mcts`; docs/design.md section 3.1b).
#
# Same node storage, ids, value-prefix rewards and backups as the pUCT search above; what
# differs is selection (sequential halving with Gumbel at the root, the deterministic
# "improved policy minus visit share" rule below it) and the rescaling of Q: by default each
# node's Q values are rescaled by the min and max of its own completed Q values (mctx's
# `qtransform_completed_by_mix_value`); with `tree_minmax` by the root's min-max statistics over
# the whole tree, as the pUCT search does (EfficientZero V2's Gumbel search). Selection is deterministic (argmax, first index wins),
# so there is no tie generator. Arithmetic is in double precision, in the operation order of
# `tests/gumbel_reference.py`.
# ============================================================================================

from libc.float cimport DBL_MIN

cdef double GUMBEL_EPSILON = 1e-8      # mctx: minimum denominator of the Q rescaling
cdef double GUMBEL_LOW_LOGIT = -1e9    # mctx `score_considered`: floor of g + logits + sigma(q)


cdef struct GSearch:
    intp B
    intp A
    intp M                      # node slots per root (num_simulations + 1)
    intp S                      # num_simulations (row length of the visit table)
    double discount
    bint value_prefix
    intp horizon
    double value_scale
    double maxvisit_init
    bint tree_minmax            # rescale Q by the tree's min-max statistics, not the node's
    double value_delta_max      # with tree_minmax: the floor of (max - min)
    # Per edge [B, M, A].
    int32_t* child              # node id of the child, 0 when not expanded
    double* logit               # prior logits of the node (root: legal actions only)
    double* prior               # softmax of them (root: over the legal actions, 0 elsewhere)
    # Per node [B, M].
    int32_t* visits
    double* value_sum
    double* raw                 # the value predicted for the node (root value / recurrent_fn)
    double* reward
    double* prefix
    int32_t* depth
    int32_t* parent
    # Per root [B].
    int32_t* pend_parent
    int32_t* pend_action
    double* shift               # the largest legal root logit
    double* vmin                # min-max statistics over the non-root nodes' Q (empty: +inf,
    double* vmax                # -inf), updated by every backup in "tree" mode
    const int32_t* ncons        # number of considered actions, min(max considered, legal A)
    const uint8_t* legal        # [B, A]
    const float* gumbel         # [B, A]
    const int32_t* table        # [R, S] visit table: row m = sequence for m considered actions
    double* cq                  # [A] scratch: completed Q values
    double* zbuf                # [A] scratch


cdef void completed_q(const GSearch* st, intp b, intp node, double* out) noexcept nogil:
    """sigma(completed Q) of every action of `node` (mctx's qtransform_completed_by_mix_value):
    visited children get Q = reward + discount * mean value, unvisited ones the mixed value;
    all are rescaled by their min and max (denominator at least 1e-8) and multiplied by
    (maxvisit_init + max child visits) * value_scale. At the root, illegal actions are never
    visited and take the mixed value (as in mctx, they count in the min and max). With
    `tree_minmax` the rescaling is the pUCT search's instead: the root's statistics over the
    tree, (q - min) / max(max - min, value_delta_max) clipped to [0, 1] (q itself, clipped,
    while max <= min)."""
    cdef intp A = st.A
    cdef intp base_node = b * st.M
    cdef intp edge = (base_node + node) * A
    cdef intp a, ci
    cdef int32_t c
    cdef double n, sum_n = 0.0, max_n = 0.0, sum_p = 0.0, p, weighted, mixed, lo, hi, d, scale, q
    for a in range(A):
        c = st.child[edge + a]
        if c != 0:
            ci = base_node + c
            n = <double>st.visits[ci]
            out[a] = st.reward[ci] + st.discount * (st.value_sum[ci] / n)
            sum_n = sum_n + n
            if n > max_n:
                max_n = n
            p = st.prior[edge + a]
            if p < DBL_MIN:
                p = DBL_MIN
            sum_p = sum_p + p
    weighted = 0.0
    if sum_n > 0.0:
        for a in range(A):
            if st.child[edge + a] != 0:
                p = st.prior[edge + a]
                if p < DBL_MIN:
                    p = DBL_MIN
                weighted = weighted + (p * out[a]) / sum_p
    mixed = (st.raw[base_node + node] + sum_n * weighted) / (sum_n + 1.0)
    scale = (st.maxvisit_init + max_n) * st.value_scale
    if st.tree_minmax:
        for a in range(A):
            q = out[a] if st.child[edge + a] != 0 else mixed
            out[a] = scale * minmax_normalize(st.vmin[b], st.vmax[b], st.value_delta_max, q)
        return
    lo = INFINITY
    hi = -INFINITY
    for a in range(A):
        if st.child[edge + a] == 0:
            out[a] = mixed
        if out[a] < lo:
            lo = out[a]
        if out[a] > hi:
            hi = out[a]
    d = hi - lo
    if d < GUMBEL_EPSILON:
        d = GUMBEL_EPSILON
    for a in range(A):
        out[a] = scale * ((out[a] - lo) / d)


cdef intp gumbel_root_argmax(const GSearch* st, intp b, int32_t considered_visit,
                             const double* cq) noexcept nogil:
    """mctx's masked argmax of `score_considered`: the first legal action with the highest
    max(-1e9, g + (logit - max legal logit) + sigma(q)) among those visited exactly
    `considered_visit` times. (The visit schedule always leaves one; should none be left, the
    restriction is dropped rather than return an illegal action.)"""
    cdef intp A = st.A
    cdef intp edge = (b * st.M) * A
    cdef intp a, best_a = -1
    cdef int32_t c, n
    cdef double s, best = -INFINITY
    cdef bint restrict = True
    while True:
        for a in range(A):
            if not st.legal[b * A + a]:
                continue
            c = st.child[edge + a]
            n = st.visits[b * st.M + c] if c != 0 else 0
            if restrict and n != considered_visit:
                continue
            s = (<double>st.gumbel[b * A + a] + (st.logit[edge + a] - st.shift[b])) + cq[a]
            if s < GUMBEL_LOW_LOGIT:
                s = GUMBEL_LOW_LOGIT
            if s > best:
                best = s
                best_a = a
        if best_a >= 0 or not restrict:
            return best_a
        restrict = False


cdef intp gumbel_interior_argmax(GSearch* st, intp b, intp node) noexcept nogil:
    """mctx's deterministic interior selection: the first action with the highest
    softmax(logits + sigma(completed Q))[a] - N(a) / (1 + sum N)."""
    cdef intp A = st.A
    cdef intp base_node = b * st.M
    cdef intp edge = (base_node + node) * A
    cdef intp a, best_a = 0
    cdef int32_t c
    cdef double mx, total, e, sum_n, s, best
    cdef double* z = st.zbuf
    completed_q(st, b, node, st.cq)
    mx = -INFINITY
    for a in range(A):
        z[a] = st.logit[edge + a] + st.cq[a]
        if z[a] > mx:
            mx = z[a]
    total = 0.0
    for a in range(A):
        e = exp(z[a] - mx)
        z[a] = e
        total = total + e
    sum_n = 0.0
    for a in range(A):
        c = st.child[edge + a]
        if c != 0:
            sum_n = sum_n + <double>st.visits[base_node + c]
    best = -INFINITY
    for a in range(A):
        c = st.child[edge + a]
        s = z[a] / total
        if c != 0:
            s = s - <double>st.visits[base_node + c] / (1.0 + sum_n)
        if s > best:
            best = s
            best_a = a
    return best_a


cdef void gumbel_select_leaf(GSearch* st, intp b) noexcept nogil:
    """Descends root `b` to an unexpanded edge; stores it in pend_parent/pend_action."""
    cdef intp A = st.A
    cdef intp base_node = b * st.M
    cdef intp edge = base_node * A
    cdef intp a, sim_index = 0, node
    cdef int32_t c
    # Root: sequential halving. The simulation index is the root's children's visit total.
    for a in range(A):
        c = st.child[edge + a]
        if c != 0:
            sim_index += st.visits[base_node + c]
    completed_q(st, b, 0, st.cq)
    a = gumbel_root_argmax(st, b, st.table[st.ncons[b] * st.S + sim_index], st.cq)
    node = 0
    while True:
        c = st.child[(base_node + node) * A + a]
        if c == 0:
            st.pend_parent[b] = <int32_t>node
            st.pend_action[b] = <int32_t>a
            return
        node = c
        a = gumbel_interior_argmax(st, b, node)


cdef void gumbel_expand_backup(GSearch* st, intp b, intp sim, const float* vp, const float* val,
                               const float* logits) noexcept nogil:
    """Makes node `sim` of root `b` from the pending edge, then backs its value up to the root."""
    cdef intp A = st.A
    cdef intp base_node = b * st.M
    cdef intp p = st.pend_parent[b]
    cdef intp a = st.pend_action[b]
    cdef intp ni = base_node + sim
    cdef intp pi = base_node + p
    cdef intp k, node, i
    cdef double r, mx, total, e, v, q
    cdef double* lgn = st.logit + ni * A
    cdef double* pr = st.prior + ni * A
    cdef const float* lg = logits + b * A
    st.child[pi * A + a] = <int32_t>sim
    st.parent[ni] = <int32_t>p
    st.depth[ni] = st.depth[pi] + 1
    r = <double>vp[b]
    st.prefix[ni] = r
    if st.value_prefix and (st.depth[pi] % st.horizon) != 0:
        r = r - st.prefix[pi]
    st.reward[ni] = r
    st.raw[ni] = <double>val[b]
    mx = -INFINITY
    for k in range(A):
        lgn[k] = <double>lg[k]
        if lgn[k] > mx:
            mx = lgn[k]
    total = 0.0
    for k in range(A):
        e = exp(lgn[k] - mx)
        pr[k] = e
        total = total + e
    for k in range(A):
        pr[k] = pr[k] / total
    v = <double>val[b]
    node = sim
    while True:
        i = base_node + node
        st.value_sum[i] = st.value_sum[i] + v
        st.visits[i] = st.visits[i] + 1
        if node == 0:
            break
        if st.tree_minmax:  # only the "tree" mode reads the statistics
            q = st.reward[i] + st.discount * (st.value_sum[i] / st.visits[i])
            if q < st.vmin[b]:
                st.vmin[b] = q
            if q > st.vmax[b]:
                st.vmax[b] = q
        v = st.reward[i] + st.discount * v
        node = st.parent[i]


def gumbel_search(cnp.ndarray root_logits, cnp.ndarray root_values, object recurrent_fn,
                  intp num_simulations, double discount, bint value_prefix,
                  intp lstm_horizon_len, cnp.ndarray gumbel, cnp.ndarray legal,
                  cnp.ndarray num_considered, cnp.ndarray table, double value_scale,
                  double maxvisit_init, bint tree_minmax=False, double value_delta_max=0.0):
    """Runs the batched Gumbel search. Low level: use `cython_mcts.run_gumbel_mcts`.

    Args:
        root_logits: float32 [B, A], C-contiguous, finite.
        root_values: float32 [B], C-contiguous, finite.
        recurrent_fn: as for `search`.
        gumbel: float32 [B, A], C-contiguous, finite.
        legal: uint8 [B, A] C-contiguous (0/1), at least one 1 per row.
        num_considered: int32 [B], root b's number of considered actions, in [1, R - 1] and at
            most its number of legal actions.
        table: int32 [R, num_simulations] C-contiguous: row m is mctx's sequence of considered
            visit counts for m considered actions.
        value_scale, maxvisit_init: finite, >= 0.
        tree_minmax: rescale Q by the root's min-max statistics over the tree (floor
            `value_delta_max`, finite >= 0) instead of each node's own min and max.

    Returns:
        (visit_counts int32 [B, A], root_values float32 [B], improved_policy float32 [B, A],
         action int64 [B]).
    """
    if not _is_plain_f32(root_logits) or cnp.PyArray_NDIM(root_logits) != 2:
        raise ValueError("root_logits must be a C-contiguous float32 [B, A] array")
    cdef intp B = cnp.PyArray_DIMS(root_logits)[0]
    cdef intp A = cnp.PyArray_DIMS(root_logits)[1]
    if B < 1 or A < 1:
        raise ValueError(f"root_logits must have B >= 1 and A >= 1, got shape ({B}, {A})")
    if (not _is_plain_f32(root_values) or cnp.PyArray_NDIM(root_values) != 1
            or cnp.PyArray_DIMS(root_values)[0] != B):
        raise ValueError(f"root_values must be a C-contiguous float32 [B={B}] array")
    if (not _is_plain_f32(gumbel) or cnp.PyArray_NDIM(gumbel) != 2
            or cnp.PyArray_DIMS(gumbel)[0] != B or cnp.PyArray_DIMS(gumbel)[1] != A):
        raise ValueError(f"gumbel must be a C-contiguous float32 [B={B}, A={A}] array")
    if (not cnp.PyArray_CheckExact(legal) or cnp.PyArray_TYPE(legal) != cnp.NPY_UINT8
            or not cnp.PyArray_ISCARRAY_RO(legal) or cnp.PyArray_NDIM(legal) != 2
            or cnp.PyArray_DIMS(legal)[0] != B or cnp.PyArray_DIMS(legal)[1] != A):
        raise ValueError(f"legal must be a C-contiguous uint8 [B={B}, A={A}] array")
    if num_simulations < 1 or num_simulations >= 2**31 - 1:
        raise ValueError(f"num_simulations must be in [1, 2**31 - 2], got {num_simulations}")
    if lstm_horizon_len < 1:
        raise ValueError(f"lstm_horizon_len must be >= 1, got {lstm_horizon_len}")
    if not callable(recurrent_fn):
        raise ValueError("recurrent_fn must be callable")
    if not (isfinite(value_scale) and value_scale >= 0.0 and isfinite(maxvisit_init)
            and maxvisit_init >= 0.0):
        raise ValueError("value_scale and maxvisit_init must be finite and >= 0")
    if not (isfinite(value_delta_max) and value_delta_max >= 0.0):
        raise ValueError("value_delta_max must be finite and >= 0")
    if (not cnp.PyArray_CheckExact(table) or cnp.PyArray_TYPE(table) != cnp.NPY_INT32
            or not cnp.PyArray_ISCARRAY_RO(table) or cnp.PyArray_NDIM(table) != 2
            or cnp.PyArray_DIMS(table)[0] < 2
            or cnp.PyArray_DIMS(table)[1] != num_simulations):
        raise ValueError(f"table must be a C-contiguous int32 [R >= 2, {num_simulations}] array")
    if (not cnp.PyArray_CheckExact(num_considered)
            or cnp.PyArray_TYPE(num_considered) != cnp.NPY_INT32
            or not cnp.PyArray_ISCARRAY_RO(num_considered)
            or cnp.PyArray_NDIM(num_considered) != 1
            or cnp.PyArray_DIMS(num_considered)[0] != B):
        raise ValueError(f"num_considered must be a C-contiguous int32 [B={B}] array")

    cdef intp R = cnp.PyArray_DIMS(table)[0]
    cdef intp M = num_simulations + 1
    cdef intp S = num_simulations
    cdef intp b, a, sim, k
    cdef const uint8_t* legal_p = <const uint8_t*>cnp.PyArray_DATA(legal)
    cdef const int32_t* ncons_p = <const int32_t*>cnp.PyArray_DATA(num_considered)
    cdef const int32_t* table_p = <const int32_t*>cnp.PyArray_DATA(table)
    cdef const float* rl = <const float*>cnp.PyArray_DATA(root_logits)
    cdef const float* rv = <const float*>cnp.PyArray_DATA(root_values)
    cdef int c
    cdef intp n_legal
    for b in range(B):
        n_legal = 0
        for a in range(A):
            if legal_p[b * A + a] > 1:
                raise ValueError("legal must hold only 0 and 1")
            n_legal += legal_p[b * A + a]
        if n_legal == 0:
            raise ValueError(f"legal_actions: root {b} has no legal action")
        if ncons_p[b] < 1 or ncons_p[b] >= R or ncons_p[b] > n_legal:
            raise ValueError(f"num_considered[{b}] = {ncons_p[b]} is not in [1, "
                             f"min({R - 1}, {n_legal} legal actions)]")
    # Every scheduled count must be a count the root can have reached (< num_simulations).
    for k in range(R * S):
        if table_p[k] < 0 or table_p[k] >= S:
            raise ValueError(f"table entries must be in [0, {S - 1}]")

    cdef cnp.ndarray child_a = _buffer(B * M * A, np.int32)
    cdef cnp.ndarray logit_a = _buffer(B * M * A, np.float64)
    cdef cnp.ndarray prior_a = _buffer(B * M * A, np.float64)
    cdef cnp.ndarray visits_a = _buffer(B * M, np.int32)
    cdef cnp.ndarray vsum_a = _buffer(B * M, np.float64)
    cdef cnp.ndarray raw_a = _buffer(B * M, np.float64)
    cdef cnp.ndarray reward_a = _buffer(B * M, np.float64)
    cdef cnp.ndarray prefix_a = _buffer(B * M, np.float64)
    cdef cnp.ndarray depth_a = _buffer(B * M, np.int32)
    cdef cnp.ndarray parent_a = _buffer(B * M, np.int32)
    cdef cnp.ndarray pp_a = _buffer(B, np.int32)
    cdef cnp.ndarray pa_a = _buffer(B, np.int32)
    cdef cnp.ndarray shift_a = _buffer(B, np.float64)
    cdef cnp.ndarray vmin_a = np.full(B, np.inf, dtype=np.float64)
    cdef cnp.ndarray vmax_a = np.full(B, -np.inf, dtype=np.float64)
    cdef cnp.ndarray cq_a = _buffer(A, np.float64)
    cdef cnp.ndarray z_a = _buffer(A, np.float64)
    # Private copies of the inputs read inside the nogil loops (the callback cannot touch them).
    cdef cnp.ndarray legal_copy = np.array(legal, dtype=np.uint8, copy=True)
    cdef cnp.ndarray gumbel_copy = np.array(gumbel, dtype=np.float32, copy=True)
    cdef cnp.ndarray ncons_copy = np.array(num_considered, dtype=np.int32, copy=True)
    cdef cnp.ndarray table_copy = np.array(table, dtype=np.int32, copy=True)

    cdef GSearch st
    st.B = B
    st.A = A
    st.M = M
    st.S = S
    st.discount = discount
    st.value_prefix = value_prefix
    st.horizon = lstm_horizon_len
    st.value_scale = value_scale
    st.maxvisit_init = maxvisit_init
    st.tree_minmax = tree_minmax
    st.value_delta_max = value_delta_max
    st.child = <int32_t*>cnp.PyArray_DATA(child_a)
    st.logit = <double*>cnp.PyArray_DATA(logit_a)
    st.prior = <double*>cnp.PyArray_DATA(prior_a)
    st.visits = <int32_t*>cnp.PyArray_DATA(visits_a)
    st.value_sum = <double*>cnp.PyArray_DATA(vsum_a)
    st.raw = <double*>cnp.PyArray_DATA(raw_a)
    st.reward = <double*>cnp.PyArray_DATA(reward_a)
    st.prefix = <double*>cnp.PyArray_DATA(prefix_a)
    st.depth = <int32_t*>cnp.PyArray_DATA(depth_a)
    st.parent = <int32_t*>cnp.PyArray_DATA(parent_a)
    st.pend_parent = <int32_t*>cnp.PyArray_DATA(pp_a)
    st.pend_action = <int32_t*>cnp.PyArray_DATA(pa_a)
    st.shift = <double*>cnp.PyArray_DATA(shift_a)
    st.vmin = <double*>cnp.PyArray_DATA(vmin_a)
    st.vmax = <double*>cnp.PyArray_DATA(vmax_a)
    st.ncons = <const int32_t*>cnp.PyArray_DATA(ncons_copy)
    st.legal = <const uint8_t*>cnp.PyArray_DATA(legal_copy)
    st.gumbel = <const float*>cnp.PyArray_DATA(gumbel_copy)
    st.table = <const int32_t*>cnp.PyArray_DATA(table_copy)
    st.cq = <double*>cnp.PyArray_DATA(cq_a)
    st.zbuf = <double*>cnp.PyArray_DATA(z_a)

    cdef double mx, total, e
    cdef double* pr
    cdef double* lgr
    with nogil:
        for b in range(B):
            # Root: logits of the legal actions (the others are never read), their softmax as
            # the prior, the largest as the shift of the Gumbel scores.
            pr = st.prior + (b * M) * A
            lgr = st.logit + (b * M) * A
            mx = -INFINITY
            for a in range(A):
                if st.legal[b * A + a]:
                    lgr[a] = <double>rl[b * A + a]
                    if lgr[a] > mx:
                        mx = lgr[a]
            st.shift[b] = mx
            total = 0.0
            for a in range(A):
                if st.legal[b * A + a]:
                    e = exp(lgr[a] - mx)
                    pr[a] = e
                    total = total + e
            for a in range(A):
                if st.legal[b * A + a]:
                    pr[a] = pr[a] / total
            st.visits[b * M] = 1
            st.value_sum[b * M] = <double>rv[b]
            st.raw[b * M] = <double>rv[b]
            gumbel_select_leaf(&st, b)

    cdef cnp.ndarray vp_arr, val_arr, lg_arr
    cdef const float* vp_p
    cdef const float* val_p
    cdef const float* lg_p
    for sim in range(1, M):
        vp_arr, val_arr, lg_arr = _leaf_outputs(recurrent_fn, st.pend_parent, st.pend_action,
                                                st.depth, B, A, M, sim)
        vp_p = <const float*>cnp.PyArray_DATA(vp_arr)
        val_p = <const float*>cnp.PyArray_DATA(val_arr)
        lg_p = <const float*>cnp.PyArray_DATA(lg_arr)
        with nogil:
            for b in range(B):
                gumbel_expand_backup(&st, b, sim, vp_p, val_p, lg_p)
                if sim + 1 < M:
                    gumbel_select_leaf(&st, b)

    cdef cnp.ndarray counts = np.zeros((B, A), dtype=np.int32)
    cdef cnp.ndarray values = np.empty(B, dtype=np.float32)
    cdef cnp.ndarray policy = np.zeros((B, A), dtype=np.float32)
    cdef cnp.ndarray chosen = np.empty(B, dtype=np.int64)
    cdef int32_t* counts_p = <int32_t*>cnp.PyArray_DATA(counts)
    cdef float* values_p = <float*>cnp.PyArray_DATA(values)
    cdef float* policy_p = <float*>cnp.PyArray_DATA(policy)
    cdef int64_t* chosen_p = <int64_t*>cnp.PyArray_DATA(chosen)
    cdef int32_t ch, max_count
    cdef double* z = st.zbuf
    with nogil:
        for b in range(B):
            max_count = 0
            for a in range(A):
                ch = st.child[(b * M) * A + a]
                if ch != 0:
                    counts_p[b * A + a] = st.visits[b * M + ch]
                    if counts_p[b * A + a] > max_count:
                        max_count = counts_p[b * A + a]
            values_p[b] = <float>(st.value_sum[b * M] / st.visits[b * M])
            completed_q(&st, b, 0, st.cq)
            # The action: among the most visited, the highest g + logits + sigma(q) (mctx).
            chosen_p[b] = gumbel_root_argmax(&st, b, max_count, st.cq)
            # The improved policy: softmax(logits + sigma(completed Q)) over the legal actions.
            lgr = st.logit + (b * M) * A
            mx = -INFINITY
            for a in range(A):
                if st.legal[b * A + a]:
                    z[a] = lgr[a] + st.cq[a]
                    if z[a] > mx:
                        mx = z[a]
            total = 0.0
            for a in range(A):
                if st.legal[b * A + a]:
                    e = exp(z[a] - mx)
                    z[a] = e
                    total = total + e
            for a in range(A):
                if st.legal[b * A + a]:
                    policy_p[b * A + a] = <float>(z[a] / total)
    return counts, values, policy, chosen
