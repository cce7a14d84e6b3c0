"""Torch parts of BarlowZero: the networks, the RLModule, the learner and the batched search."""
