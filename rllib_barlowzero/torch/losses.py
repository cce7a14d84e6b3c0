"""Losses and value transforms of BarlowZero (docs/design.md section 3.2).

All functions take and return torch tensors and work on any device and floating dtype.

- `scalar_transform` / `inverse_scalar_transform`: MuZero's invertible squashing
  h(x) = sign(x) (sqrt(|x| + 1) - 1) + eps x with eps = 0.001, and its exact inverse.
- `scalar_to_support` / `support_to_scalar`: two-hot encoding of h(x) on the integers
  -support_size..support_size (300 -> 601 bins) and back (softmax, expectation, inverse h).
- `categorical_cross_entropy`: value, value-prefix and policy losses.
- `barlow_twins_loss`: BarlowZero's consistency loss (symmetric, gradient into both inputs).
- `simsiam_loss`: EfficientZero's consistency loss (negative cosine, target detached).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "CONSISTENCY_LOSSES",
    "SCALAR_TRANSFORM_EPS",
    "barlow_twins_loss",
    "categorical_cross_entropy",
    "check_consistency_loss",
    "inverse_scalar_transform",
    "scalar_to_support",
    "scalar_transform",
    "simsiam_loss",
    "support_to_scalar",
]

SCALAR_TRANSFORM_EPS = 0.001
CONSISTENCY_LOSSES = ("barlow", "simsiam", "none")
BARLOW_BN_EPS = 1e-5


def scalar_transform(x: torch.Tensor) -> torch.Tensor:
    """h(x) = sign(x) (sqrt(|x| + 1) - 1) + 0.001 x, elementwise, any shape.

    sqrt(|x| + 1) - 1 is computed as |x| / (sqrt(|x| + 1) + 1), which avoids the cancellation
    near 0 in low precision.
    """
    a = x.abs()
    return torch.sign(x) * (a / (torch.sqrt(a + 1.0) + 1.0)) + SCALAR_TRANSFORM_EPS * x


def inverse_scalar_transform(y: torch.Tensor) -> torch.Tensor:
    """The exact inverse of `scalar_transform`, elementwise, any shape.

    With s = sqrt(|x| + 1) and e = 0.001, |h| = (s - 1)(1 + e (s + 1)), so
    s = 2 (1 + e + |h|) / (1 + sqrt(1 + 4 e (1 + e + |h|)))   (the positive root, rationalised)
    |x| = (s - 1)(s + 1) = |h| (s + 1) / (1 + e (s + 1)).
    Both forms are free of cancellation, so the inverse is accurate near 0 in float32 too.
    """
    e = SCALAR_TRANSFORM_EPS
    a = y.abs()
    b = 1.0 + e + a
    s = 2.0 * b / (1.0 + torch.sqrt(1.0 + 4.0 * e * b))
    return torch.sign(y) * a * (s + 1.0) / (1.0 + e * (s + 1.0))


def scalar_to_support(x: torch.Tensor, support_size: int) -> torch.Tensor:
    """Two-hot encoding of h(x) on the integer support -support_size..support_size.

    Args:
        x: scalars, any shape [...].
        support_size: S; the support has 2S + 1 bins.
    Returns:
        probabilities [..., 2S + 1] (float32, or x's dtype if it is float64): h(x) is clipped to
        [-S, S] and split between its two neighbouring integers so that the expectation is h(x).
    """
    dtype = x.dtype if x.dtype == torch.float64 else torch.float32
    h = scalar_transform(x.to(dtype)).clamp(-support_size, support_size)
    floor = h.floor()
    upper_weight = h - floor
    lower_weight = 1.0 - upper_weight
    lower_index = (floor + support_size).long()
    # At h = S exactly the upper neighbour lies outside the support; its weight is 0 there.
    upper_index = (lower_index + 1).clamp(max=2 * support_size)
    out = torch.zeros(*x.shape, 2 * support_size + 1, dtype=dtype, device=x.device)
    out.scatter_add_(-1, lower_index.unsqueeze(-1), lower_weight.unsqueeze(-1))
    out.scatter_add_(-1, upper_index.unsqueeze(-1), upper_weight.unsqueeze(-1))
    return out


def support_to_scalar(logits: torch.Tensor, support_size: int) -> torch.Tensor:
    """Scalar from support logits: softmax, expectation over -S..S, inverse transform.

    Args:
        logits: [..., 2S + 1].
    Returns:
        scalars [...].
    """
    if logits.shape[-1] != 2 * support_size + 1:
        raise ValueError(
            f"support_to_scalar: expected {2 * support_size + 1} logits for support_size "
            f"{support_size}, got a last dimension of {logits.shape[-1]}"
        )
    probs = torch.softmax(logits, dim=-1)
    support = torch.arange(-support_size, support_size + 1, dtype=probs.dtype, device=probs.device)
    return inverse_scalar_transform((probs * support).sum(-1))


def categorical_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """-sum(target * log_softmax(logits)) over the last axis.

    Args:
        logits: [..., K]; target_probs: [..., K] (rows sum to 1).
    Returns:
        [...] one loss per row.
    """
    return -(target_probs * torch.log_softmax(logits, dim=-1)).sum(-1)


def _standardise(z: torch.Tensor) -> torch.Tensor:
    """Per-feature (z - mean) / sqrt(biased var + eps): BatchNorm1d(affine=False), training mode."""
    mean = z.mean(dim=0, keepdim=True)
    var = z.var(dim=0, unbiased=False, keepdim=True)
    return (z - mean) / torch.sqrt(var + BARLOW_BN_EPS)


def barlow_twins_loss(z_a: torch.Tensor, z_b: torch.Tensor, lambd: float = 0.0051) -> torch.Tensor:
    """Barlow Twins: sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2.

    Args:
        z_a, z_b: [N, D] embeddings of the two views (N >= 2). Each is standardised over the batch
            (mean 0, biased variance 1, eps 1e-5), then C = z_a_n^T z_b_n / N is their [D, D]
            cross-correlation.
        lambd: weight of the redundancy-reduction (off-diagonal) term.
    Returns:
        scalar loss; gradient flows into both inputs (no stop-gradient, no predictor).
    Raises:
        ValueError: fewer than 2 rows (the batch statistics are undefined) or mismatched shapes.
    """
    if z_a.dim() != 2 or z_a.shape != z_b.shape:
        raise ValueError(
            "barlow_twins_loss: expected two [N, D] embeddings of the same shape, got "
            f"{tuple(z_a.shape)} and {tuple(z_b.shape)}"
        )
    n = z_a.shape[0]
    if n < 2:
        raise ValueError(
            f"barlow_twins_loss needs at least 2 samples to standardise over the batch, got N={n}"
        )
    c = _standardise(z_a).T @ _standardise(z_b) / n
    diag = torch.diagonal(c)
    on_diag = (1.0 - diag).pow(2).sum()
    off_diag = c.pow(2).sum() - diag.pow(2).sum()
    return on_diag + lambd * off_diag


def simsiam_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """EfficientZero's consistency loss: negative cosine similarity, z detached.

    Args:
        p: [N, D] online (projected and predicted) embeddings; receives gradient.
        z: [N, D] target embeddings; detached here (stop-gradient).
    Returns:
        [N] per-sample loss in [-1, 1].
    """
    p = F.normalize(p, p=2.0, dim=-1, eps=1e-5)
    z = F.normalize(z.detach(), p=2.0, dim=-1, eps=1e-5)
    return -(p * z).sum(-1)


def check_consistency_loss(name: str) -> str:
    """Returns `name` if it is a known consistency loss; raises ValueError listing them if not."""
    if name not in CONSISTENCY_LOSSES:
        raise ValueError(
            f"unknown consistency_loss {name!r}; known: {', '.join(map(repr, CONSISTENCY_LOSSES))}"
        )
    return name
