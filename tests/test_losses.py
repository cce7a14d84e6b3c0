"""Tests of rllib_barlowzero.torch.losses: transforms, two-hot supports and the loss functions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rllib_barlowzero.torch.losses import (
    CONSISTENCY_LOSSES,
    barlow_twins_loss,
    categorical_cross_entropy,
    check_consistency_loss,
    inverse_scalar_transform,
    scalar_to_support,
    scalar_transform,
    simsiam_loss,
    support_to_scalar,
)


def _h_numpy(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * (np.sqrt(np.abs(x) + 1.0) - 1.0) + 0.001 * x


def _grid() -> np.ndarray:
    """Both signs of 0 and a dense log grid up to 1e5, plus a uniform grid on [-1e5, 1e5]."""
    logs = np.logspace(-6, 5, 2000)
    return np.concatenate([[0.0], logs, -logs, np.linspace(-1e5, 1e5, 2001)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scalar_transform_matches_formula_and_inverts(dtype):
    x_np = _grid()
    x = torch.tensor(x_np, dtype=dtype)
    h = scalar_transform(x)
    np.testing.assert_allclose(h.double().numpy(), _h_numpy(x_np), rtol=1e-5, atol=1e-7)
    back = inverse_scalar_transform(h).double().numpy()
    np.testing.assert_allclose(back, x.double().numpy(), rtol=1e-4, atol=1e-7)
    # The other way round too: h(h^-1(y)) = y.
    y = torch.linspace(-500.0, 500.0, 5001, dtype=dtype)
    np.testing.assert_allclose(
        scalar_transform(inverse_scalar_transform(y)).double().numpy(),
        y.double().numpy(),
        rtol=1e-5,
        atol=1e-5,
    )


def test_scalar_transform_is_odd_and_monotonic():
    x = torch.linspace(-1e4, 1e4, 10001, dtype=torch.float64)
    h = scalar_transform(x)
    assert torch.all(h[1:] > h[:-1])
    torch.testing.assert_close(scalar_transform(-x), -h)


def test_two_hot_round_trip_and_shape():
    support = 300
    # Values whose h(x) lies inside the support (|h| <= 300 <=> |x| <= about 5.3e4).
    x = torch.cat(
        [
            torch.tensor([0.0, 1.0, -1.0, 0.5, 2.999, 300.0, -1234.5, 5e4, -5e4]),
            torch.empty(500).uniform_(-3e4, 3e4, generator=torch.Generator().manual_seed(0)),
        ]
    )
    probs = scalar_to_support(x, support)
    assert probs.shape == (x.numel(), 2 * support + 1)
    torch.testing.assert_close(probs.sum(-1), torch.ones(x.numel()))
    assert int((probs > 0).sum(-1).max()) <= 2
    bins = torch.arange(-support, support + 1, dtype=torch.float32)
    torch.testing.assert_close((probs * bins).sum(-1), scalar_transform(x), rtol=1e-6, atol=1e-5)
    back = support_to_scalar(torch.log(probs), support)
    np.testing.assert_allclose(back.numpy(), x.numpy(), rtol=1e-4, atol=1e-4)


def test_two_hot_keeps_leading_shape_and_clips():
    x = torch.tensor([[0.3, -7.0, 1e9], [-1e9, 0.0, 2.0]])
    probs = scalar_to_support(x, 10)
    assert probs.shape == (2, 3, 21)
    assert probs[0, 2, -1] == 1.0 and probs[1, 0, 0] == 1.0  # clipped to the ends
    assert probs[1, 1, 10] == 1.0  # h(0) = 0 is the middle bin
    torch.testing.assert_close(
        support_to_scalar(torch.log(probs[1, 2]), 10), torch.tensor(2.0), rtol=1e-4, atol=1e-4
    )


def test_support_to_scalar_checks_width():
    with pytest.raises(ValueError, match="601"):
        support_to_scalar(torch.zeros(2, 600), 300)


def _barlow_numpy(a: np.ndarray, b: np.ndarray, lambd: float) -> float:
    """Independent float64 computation of the formula in docs/design.md section 3.2."""
    n, d = a.shape

    def standardise(z):
        return (z - z.mean(0)) / np.sqrt(z.var(0) + 1e-5)  # np.var is the biased variance

    c = standardise(a).T @ standardise(b) / n
    total = 0.0
    for i in range(d):
        for j in range(d):
            total += (1.0 - c[i, j]) ** 2 if i == j else lambd * c[i, j] ** 2
    return total


@pytest.mark.parametrize("lambd", [0.0051, 0.5])
def test_barlow_twins_matches_numpy_reference(lambd):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(32, 12)) * rng.uniform(0.1, 5.0, size=12) + rng.normal(size=12)
    b = 0.7 * a + 0.5 * rng.normal(size=(32, 12))
    expected = _barlow_numpy(a, b, lambd)
    got32 = barlow_twins_loss(
        torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32), lambd=lambd
    )
    got64 = barlow_twins_loss(torch.tensor(a), torch.tensor(b), lambd=lambd)
    assert got32.shape == ()
    assert float(got32) == pytest.approx(expected, rel=1e-4)
    assert float(got64) == pytest.approx(expected, rel=1e-10)


def test_barlow_twins_standardises_like_batchnorm1d():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(16, 8, generator=gen, dtype=torch.float64) * 3 + 2
    b = torch.randn(16, 8, generator=gen, dtype=torch.float64)
    bn = torch.nn.BatchNorm1d(8, affine=False, dtype=torch.float64).train()
    c = bn(a).T @ bn(b) / 16
    expected = ((1 - torch.diagonal(c)) ** 2).sum() + 0.0051 * (
        c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    )
    torch.testing.assert_close(barlow_twins_loss(a, b), expected)


def _sylvester_hadamard(n: int) -> np.ndarray:
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def test_barlow_twins_is_zero_for_identical_decorrelated_embeddings():
    # Columns 1.. of a Hadamard matrix: entries +-1, mean 0, biased variance 1, mutually
    # orthogonal -> already standardised and decorrelated, so C = I / (1 + 1e-5).
    z = torch.tensor(_sylvester_hadamard(16)[:, 1:])
    assert float(barlow_twins_loss(z, z)) < 1e-8
    # Standardisation makes it invariant to per-feature scale and shift.
    scaled = z * torch.linspace(0.5, 4.0, 15, dtype=torch.float64) + 3.0
    assert float(barlow_twins_loss(scaled, z)) < 1e-8
    assert float(barlow_twins_loss(z.float(), z.float())) < 1e-6
    # An orthogonal rotation of the features is not the identity correlation any more.
    q, _ = torch.linalg.qr(torch.randn(15, 15, dtype=torch.float64))
    assert float(barlow_twins_loss(z, z @ q)) > 1e-2


def test_barlow_twins_gradient_reaches_both_inputs():
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(8, 6, generator=gen, requires_grad=True)
    b = torch.randn(8, 6, generator=gen, requires_grad=True)
    barlow_twins_loss(a, b).backward()
    for t in (a, b):
        assert t.grad is not None
        assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


@pytest.mark.parametrize("n", [0, 1])
def test_barlow_twins_refuses_fewer_than_two_samples(n):
    with pytest.raises(ValueError, match="at least 2 samples"):
        barlow_twins_loss(torch.randn(n, 4), torch.randn(n, 4))


def test_barlow_twins_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        barlow_twins_loss(torch.randn(4, 4), torch.randn(4, 5))


def test_simsiam_loss_values_and_stop_gradient():
    gen = torch.Generator().manual_seed(3)
    p = torch.randn(5, 7, generator=gen, requires_grad=True)
    z = torch.randn(5, 7, generator=gen, requires_grad=True)
    loss = simsiam_loss(p, z)
    assert loss.shape == (5,)
    expected = -torch.nn.functional.cosine_similarity(p, z, dim=-1)
    torch.testing.assert_close(loss, expected)
    loss.sum().backward()
    assert z.grad is None  # the target is detached
    assert p.grad is not None and p.grad.abs().sum() > 0
    torch.testing.assert_close(simsiam_loss(z.detach(), z.detach()), -torch.ones(5))


def test_categorical_cross_entropy_matches_manual():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(3, 4, 9))
    target = rng.uniform(size=(3, 4, 9))
    target /= target.sum(-1, keepdims=True)
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -(target * log_softmax).sum(-1)
    got = categorical_cross_entropy(torch.tensor(logits), torch.tensor(target))
    assert got.shape == (3, 4)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    # A one-hot target gives the negative log-probability of its class.
    one_hot = torch.nn.functional.one_hot(torch.tensor([2, 0]), 9).double()
    torch.testing.assert_close(
        categorical_cross_entropy(torch.tensor(logits[0, :2]), one_hot),
        -torch.log_softmax(torch.tensor(logits[0, :2]), -1)[[0, 1], [2, 0]],
    )


def test_consistency_loss_names():
    assert CONSISTENCY_LOSSES == ("barlow", "simsiam", "none")
    for name in CONSISTENCY_LOSSES:
        assert check_consistency_loss(name) == name
    with pytest.raises(ValueError, match="'barlow', 'simsiam', 'none'"):
        check_consistency_loss("byol")
