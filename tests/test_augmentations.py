"""Tests of rllib_barlowzero.torch.augmentations: shift and intensity."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rllib_barlowzero.torch.augmentations import AUGMENTATIONS, augment, intensity, shift


def _images(b: int = 12, c: int = 3, h: int = 20, w: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(seed))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_known_names():
    assert set(AUGMENTATIONS) == {"shift", "intensity"}


@pytest.mark.parametrize("names", [["shift"], ["intensity"], ["shift", "intensity"]])
def test_seeded_generator_is_deterministic(names):
    x = _images()
    a = augment(x, names, _gen(7))
    b = augment(x, names, _gen(7))
    c = augment(x, names, _gen(8))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(x, _images())  # the input is not modified


def test_shift_is_a_translated_replicate_padded_copy():
    x = _images(b=16, h=20, w=16)
    out = shift(x, _gen(3))
    assert out.shape == x.shape
    padded = F.pad(x, (4, 4, 4, 4), mode="replicate")
    offsets = set()
    for i in range(x.shape[0]):
        matches = [
            (dy, dx)
            for dy in range(9)
            for dx in range(9)
            if torch.equal(out[i], padded[i, :, dy : dy + 20, dx : dx + 16])
        ]
        assert len(matches) == 1, f"sample {i} is not a single crop of the padded image"
        offsets.add(matches[0])
    assert len(offsets) > 1  # per-sample offsets


def test_shift_works_on_uint8_and_keeps_dtype():
    x = (_images(b=4) * 255).to(torch.uint8)
    out = shift(x, _gen(0))
    assert out.dtype == torch.uint8
    torch.testing.assert_close(out.float(), shift(x.float(), _gen(0)), rtol=0, atol=0)


def test_intensity_scales_each_sample_by_a_factor_in_range():
    x = _images(b=64) + 0.1  # away from 0 so the ratio is well defined
    out = intensity(x, _gen(5))
    ratio = out / x
    factor = ratio.flatten(1)[:, 0]
    torch.testing.assert_close(ratio, factor[:, None, None, None].expand_as(ratio))
    assert float(factor.min()) >= 0.9 - 1e-6 and float(factor.max()) <= 1.1 + 1e-6
    assert factor.unique().numel() > 1  # one factor per sample
    # Over many samples the clip at two standard deviations is reached.
    many = intensity(torch.ones(20000, 1, 1, 1), _gen(6)).flatten()
    assert float(many.min()) == pytest.approx(0.9) and float(many.max()) == pytest.approx(1.1)


def test_augment_applies_in_order():
    x = _images()
    g = _gen(11)
    expected = intensity(shift(x, g), g)
    torch.testing.assert_close(augment(x, ["shift", "intensity"], _gen(11)), expected)


@pytest.mark.parametrize("names", [["shift"], ["intensity"], ["shift", "intensity"],
                                   ["intensity", "shift"]])
def test_uint8_frames_give_the_float_result(names):
    # The module passes uint8 frames: the crop runs on uint8, so it must equal augmenting the
    # float copy exactly, and the output is float32 either way.
    frames = torch.randint(0, 256, (6, 12, 20, 16), dtype=torch.uint8,
                           generator=_gen(3))
    from_uint8 = augment(frames, names, _gen(5))
    from_float = augment(frames.float(), names, _gen(5))
    assert from_uint8.dtype == torch.float32
    torch.testing.assert_close(from_uint8, from_float, rtol=0, atol=0)


def test_unknown_augmentation_names_are_refused():
    with pytest.raises(ValueError, match="'shift', 'intensity'"):
        augment(_images(), ["shift", "rotate"], _gen(0))
    with pytest.raises(ValueError, match="rotate"):
        augment(torch.zeros(4, 3), ["rotate"], _gen(0))  # refused for vectors too


def test_vector_inputs_pass_through_and_other_ranks_fail():
    v = torch.randn(8, 5)
    assert augment(v, ["shift", "intensity"], _gen(0)) is v
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        augment(torch.zeros(3, 8, 8), ["shift"], _gen(0))


def test_no_generator_uses_global_rng():
    x = _images(b=4)
    torch.manual_seed(0)
    a = augment(x, ["shift", "intensity"], None)
    torch.manual_seed(0)
    b = augment(x, ["shift", "intensity"], None)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
