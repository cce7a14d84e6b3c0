"""Where a run's random streams come from: one seed, and a tag and index per owner.

Every random draw of a run (root noise, tie-breaking, action sampling, which samples are
re-searched) comes from a numpy generator seeded with the entropy (seed, tag, index...), so a seed
reproduces a run and no two owners share a stream:

- slot s of an env runner's vector env: (seed, ENV_RUNNER_STREAM or EVALUATION_STREAM,
  worker index, s);
- reanalyze batch i (the batch of gradient step i): (seed, REANALYZE_STREAM, i).
"""

from __future__ import annotations

import numpy as np

REANALYZE_STREAM = 1
ENV_RUNNER_STREAM = 2
EVALUATION_STREAM = 3


def run_seed(seed: int | None) -> int:
    """The seed every random stream of a run derives from: `seed`, or fresh entropy if None."""
    if seed is None:
        return int(np.random.SeedSequence().entropy % 2**63)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be an int >= 0 or None, got {seed!r}")
    return int(seed)
