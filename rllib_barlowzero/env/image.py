"""Image observations of any gymnasium env -> channels-first uint8 frames (the one place).

BarlowZero's network and frame stacking take images as single uint8 frames [C, H, W]
(channels first, 0..255); :class:`ChannelsFirstUint8` turns every supported Box image space into
that, before frame stacking (``FrameStackingEnvToModule`` then stacks these frames along C).

Supported observation spaces (anything else is refused with a ``ValueError`` naming them):

* shape: (H, W) -> (1, H, W); (C, H, W) kept; (H, W, C) -> (C, H, W).
* dtype: uint8 kept as is; bool -> {0, 255}; float (Box bounds within [0, 1]) -> round(x * 255)
  (values are clipped to [0, 1] first).

Layout rule for a 3-D Box of shape (a, b, c): it is **channels-first when a is strictly
smaller than both b and c, otherwise channels-last** (ties, e.g. MinAtar Seaquest's (10, 10, 10),
and cubes go to channels-last, numpy's/gymnasium's image convention). Examples: (3, 96, 96),
(1, 10, 10) and (4, 84, 84) are channels-first; (210, 160, 3), (10, 10, 4) (MinAtar) and
(84, 84, 1) are channels-last. A shape the rule misreads (e.g. a channels-first (16, 8, 8)) needs
``ChannelsFirstUint8(env, channels_first=True)`` in the user's own env creator.

ALE ids do not come through here: their own pipeline (``rllib_barlowzero.env.atari``) already
makes [3, 96, 96] uint8 frames.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

__all__ = [
    "ChannelsFirstUint8",
    "EXPECTED_IMAGE_SPACES",
    "channels_first_uint8_space",
    "image_is_channels_first",
    "is_image_space",
    "to_channels_first_uint8",
]

EXPECTED_IMAGE_SPACES = (
    "a Box image observation space of shape (H, W), (H, W, C) or (C, H, W) with dtype uint8, "
    "bool, or float with bounds within [0, 1]"
)


def is_image_space(space: gym.Space) -> bool:
    """True for a 2-D or 3-D Box: the observations :class:`ChannelsFirstUint8` converts."""
    return isinstance(space, gym.spaces.Box) and len(space.shape) in (2, 3)


def image_is_channels_first(shape: tuple[int, ...]) -> bool:
    """The layout rule (module doc): (a, b, c) is channels-first iff a < b and a < c."""
    if len(shape) != 3:
        raise ValueError(f"the layout rule is for 3-D image shapes, got {tuple(shape)}")
    a, b, c = (int(d) for d in shape)
    return a < b and a < c


def _kind(space: gym.spaces.Box) -> str:
    """'uint8', 'bool' or 'float'; a ValueError naming the supported spaces otherwise."""
    dtype = np.dtype(space.dtype)
    if dtype == np.uint8:
        return "uint8"
    if dtype == np.bool_:
        return "bool"
    if np.issubdtype(dtype, np.floating):
        low, high = np.asarray(space.low), np.asarray(space.high)
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))) or (
            low.min() < 0.0 or high.max() > 1.0
        ):
            raise ValueError(
                f"BarlowZero needs {EXPECTED_IMAGE_SPACES}; the env's float image space has "
                f"bounds [{low.min()}, {high.max()}] (rescale it to [0, 1] or use uint8 0..255)."
            )
        return "float"
    raise ValueError(
        f"BarlowZero needs {EXPECTED_IMAGE_SPACES}; the env's image space has dtype {dtype}."
    )


def _check_image_space(space: gym.Space) -> str:
    if not is_image_space(space):
        raise ValueError(f"BarlowZero needs {EXPECTED_IMAGE_SPACES}; the env has {space}.")
    if min(space.shape) < 1:
        raise ValueError(f"BarlowZero needs {EXPECTED_IMAGE_SPACES}; the env has {space}.")
    return _kind(space)


def _output_shape(shape: tuple[int, ...], channels_first: bool) -> tuple[int, int, int]:
    if len(shape) == 2:
        return (1, int(shape[0]), int(shape[1]))
    if channels_first:
        return tuple(int(d) for d in shape)  # type: ignore[return-value]
    return (int(shape[2]), int(shape[0]), int(shape[1]))


def channels_first_uint8_space(
    space: gym.Space, channels_first: bool | None = None
) -> gym.spaces.Box:
    """The space :class:`ChannelsFirstUint8` makes of ``space``: Box(0, 255, (C, H, W), uint8)."""
    _check_image_space(space)
    if channels_first is None and len(space.shape) == 3:
        channels_first = image_is_channels_first(space.shape)
    return gym.spaces.Box(0, 255, _output_shape(space.shape, bool(channels_first)), np.uint8)


def to_channels_first_uint8(obs: np.ndarray, channels_first: bool | None = None) -> np.ndarray:
    """One frame (H, W), (H, W, C) or (C, H, W) of uint8, bool or float in [0, 1] -> uint8
    (C, H, W), C-contiguous. ``channels_first=None`` applies the layout rule to 3-D frames."""
    obs = np.asarray(obs)
    if obs.ndim == 2:
        obs = obs[None]
    elif obs.ndim == 3:
        if channels_first is None:
            channels_first = image_is_channels_first(obs.shape)
        if not channels_first:
            obs = obs.transpose(2, 0, 1)
    else:
        raise ValueError(f"expected an image frame (H, W), (H, W, C) or (C, H, W); got {obs.shape}")
    if obs.dtype == np.uint8:
        pass
    elif obs.dtype == np.bool_:
        obs = obs.astype(np.uint8) * np.uint8(255)
    elif np.issubdtype(obs.dtype, np.floating):
        obs = np.rint(np.clip(obs, 0.0, 1.0) * 255.0).astype(np.uint8)
    else:
        raise ValueError(
            f"image frames must be uint8, bool or float in [0, 1]; got dtype {obs.dtype}"
        )
    return np.ascontiguousarray(obs)


class ChannelsFirstUint8(gym.ObservationWrapper):
    """Any supported Box image observation -> uint8 [C, H, W] frames (see the module doc).

    Args:
        env: an env whose observation space is a 2-D or 3-D Box of dtype uint8, bool or float
            within [0, 1]; anything else raises a ``ValueError`` naming what is expected.
        channels_first: the layout of a 3-D space; ``None`` (default) applies the layout rule.
    """

    def __init__(self, env: gym.Env, channels_first: bool | None = None):
        super().__init__(env)
        space = env.observation_space
        self._kind = _check_image_space(space)
        if len(space.shape) == 3:
            self.channels_first = (
                image_is_channels_first(space.shape)
                if channels_first is None
                else bool(channels_first)
            )
        else:
            self.channels_first = True  # (H, W) -> (1, H, W)
        self.observation_space = channels_first_uint8_space(space, self.channels_first)
        self._identity = self._kind == "uint8" and len(space.shape) == 3 and self.channels_first

    def observation(self, observation: np.ndarray) -> np.ndarray:
        if self._identity:
            return np.ascontiguousarray(observation)
        return to_channels_first_uint8(observation, self.channels_first)
