"""Names of the batch and output columns BarlowZero's parts pass to each other.

In the style of RLlib's `ray.rllib.core.columns.Columns` (whose OBS and ACTIONS BarlowZero uses as
they are): one definition per key that one file writes and another reads. B is the batch size, K
the unroll steps, A the actions, S the support size (2 * support_size + 1), D the projection width.
The values are stored in episodes and checkpoints: do not change them.

This module imports nothing from the package (anything may import it).
"""

from __future__ import annotations

__all__ = ["BarlowZeroColumns"]


class BarlowZeroColumns:
    # -- acting: outputs of the module's `_forward_exploration` / `_forward_inference`, kept in
    # the episodes' extra model outputs (read by the algorithm, serve and evaluate).
    # float32 [B, A]: the policy target of the step: root visit counts, normalised (pUCT), or the
    # search's improved policy (search_algorithm "gumbel").
    MCTS_POLICY = "mcts_policy"
    ROOT_VALUE = "root_value"  # float32 [B]: the search's root value
    VISIT_COUNTS = "visit_counts"  # int32 [B, A]: root visit counts (search "gumbel" only)

    # -- the learner's training batch, made by reanalyze (besides Columns.OBS [B, *obs] and
    # Columns.ACTIONS int64 [B, K]).
    TARGET_OBS = "target_obs"  # [B, K, *obs]: the observations at t+1..t+K (consistency loss)
    TARGET_VALUE = "target_value"  # float32 [B, K+1]: n-step value targets
    TARGET_VALUE_PREFIX = "target_value_prefix"  # float32 [B, K+1]: value-prefix targets
    TARGET_POLICY = "target_policy"  # float32 [B, K+1, A]: search policies (re-searched or stored)
    VALUE_MASK = "value_mask"  # float32 [B, K+1]: 1 where the value/prefix targets count
    POLICY_MASK = "policy_mask"  # float32 [B, K+1]: 1 where the policy target counts
    CONSISTENCY_MASK = "consistency_mask"  # float32 [B, K]: 1 where o_{t+k} exists
    WEIGHTS = "weights"  # float32 [B]: prioritized-replay importance weights
    TD_STEPS = "td_steps"  # int64 [B]: the n-step horizon of each sample's value target

    # -- the module's unroll (`_forward_train`), read by the learner's loss.
    VALUE_LOGITS = "value_logits"  # float32 [B, K+1, S]
    POLICY_LOGITS = "policy_logits"  # float32 [B, K+1, A]
    VALUE_PREFIX_LOGITS = "value_prefix_logits"  # float32 [B, K, S]
    ONLINE_PROJECTION = "online_projection"  # float32 [B, K, D] (with a consistency loss)
    TARGET_PROJECTION = "target_projection"  # float32 [B, K, D] (with a consistency loss)

    # -- the learner's results: per-sample priorities of the batch, for the replay buffer.
    NEW_PRIORITIES = "new_priorities"  # float32 [B]: |predicted value - value target| at k = 0
