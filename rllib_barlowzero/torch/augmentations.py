"""Image augmentations of the consistency branch (EfficientZero's "shift" and "intensity").

All take a batch of images [B, C, H, W] on any device and an optional `torch.Generator` that
seeds them; the random draws are made on the generator's device (CPU when no generator is given)
and then moved to the images' device, so a CPU generator gives the same augmentation on every
device. Without a generator the global torch RNG is used.

Augmentations are image-only: `augment` returns non-image (2-D, [B, D]) inputs unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["AUGMENTATIONS", "augment", "check_augmentations", "intensity", "shift"]

SHIFT_PAD = 4
INTENSITY_SCALE = 0.05


def _device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _check_images(x: torch.Tensor, name: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name}: expected a batch of images [B, C, H, W], got {tuple(x.shape)}")


def shift(
    x: torch.Tensor, generator: torch.Generator | None = None, pad: int = SHIFT_PAD
) -> torch.Tensor:
    """Random shift: replicate-pad `pad` pixels on each side, random crop back to [H, W].

    One offset (dy, dx) in [0, 2 * pad]^2 per sample. Implemented as a gather with clamped
    indices, which equals padding with `ReplicationPad2d(pad)` and cropping at (dy, dx), and works
    for any dtype (uint8 too).

    Args:
        x: [B, C, H, W] images.
    Returns:
        [B, C, H, W], same dtype and device.
    """
    _check_images(x, "shift")
    b, c, h, w = x.shape
    offsets = torch.randint(
        0, 2 * pad + 1, (2, b), generator=generator, device=_device(generator)
    ).to(x.device)
    # Row i of the crop at offset dy is row (dy + i - pad) of the image, clamped to its edges.
    rows = (offsets[0, :, None] + torch.arange(h, device=x.device) - pad).clamp(0, h - 1)
    cols = (offsets[1, :, None] + torch.arange(w, device=x.device) - pad).clamp(0, w - 1)
    out = x.gather(2, rows[:, None, :, None].expand(b, c, h, w))
    return out.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def intensity(
    x: torch.Tensor, generator: torch.Generator | None = None, scale: float = INTENSITY_SCALE
) -> torch.Tensor:
    """Random intensity: x * (1 + scale * clip(N(0, 1), -2, 2)), one factor per sample.

    With the default scale the factors lie in [0.9, 1.1].

    Args:
        x: [B, C, H, W] float images.
    Returns:
        [B, C, H, W], same dtype and device.
    """
    _check_images(x, "intensity")
    if not x.is_floating_point():
        raise ValueError(f"intensity: expected float images, got dtype {x.dtype}")
    noise = torch.randn(x.shape[0], generator=generator, device=_device(generator))
    factor = 1.0 + scale * noise.clamp(-2.0, 2.0)
    return x * factor.to(device=x.device, dtype=x.dtype)[:, None, None, None]


AUGMENTATIONS: dict[str, Callable[..., torch.Tensor]] = {"shift": shift, "intensity": intensity}


def check_augmentations(names: Sequence[str]) -> list[str]:
    """Returns `names` as a list; raises ValueError naming the known augmentations if one is not."""
    if isinstance(names, str):
        names = [names]
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise ValueError(
            f"unknown augmentation(s) {unknown}; known: {', '.join(map(repr, AUGMENTATIONS))}"
        )
    return list(names)


def augment(
    x: torch.Tensor, names: Sequence[str], generator: torch.Generator | None = None
) -> torch.Tensor:
    """Applies the augmentations `names` in order.

    Integer images (uint8 frames) are shifted in their own dtype, a quarter of the memory traffic
    of float32 (a crop is exact in any dtype), and turned float before anything else.

    Args:
        x: [B, C, H, W] images, float or uint8; [B, D] vector observations are returned unchanged
            (augmentations are image-only).
        names: drawn from ("shift", "intensity"); an unknown name raises ValueError even for
            vector inputs.
        generator: seeds the draws (see the module docstring).
    Returns:
        the augmented batch, same shape and device; float32 for uint8 images, else x's dtype.
    """
    names = check_augmentations(names)
    if x.dim() == 2:
        return x
    if x.dim() != 4:
        raise ValueError(
            f"augment: expected images [B, C, H, W] or vectors [B, D], got {tuple(x.shape)}"
        )
    for name in names:
        if name != "shift" and not x.is_floating_point():
            x = x.float()
        x = AUGMENTATIONS[name](x, generator)
    return x if x.is_floating_point() else x.float()
