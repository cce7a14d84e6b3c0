"""Environments and env-side connectors: EfficientZero Atari pipeline, any gymnasium image env made
uint8 [C, H, W] (MinAtar ids registered on first use), frame stacking."""

from rllib_barlowzero.env.atari import (
    ATARI_ENV_CONFIG_KEYS,
    atari_env_creator,
    is_atari_env_id,
    make_atari_env,
)
from rllib_barlowzero.env.frame_stacking import (
    FrameStackingEnvToModule,
    stack_frames,
    stacked_observation_space,
)
from rllib_barlowzero.env.gymnasium_env import make_gym_env
from rllib_barlowzero.env.image import (
    ChannelsFirstUint8,
    channels_first_uint8_space,
    image_is_channels_first,
    is_image_space,
    to_channels_first_uint8,
)
from rllib_barlowzero.env.minatar_envs import is_minatar_env_id, register_minatar_envs

__all__ = [
    "ATARI_ENV_CONFIG_KEYS",
    "ChannelsFirstUint8",
    "FrameStackingEnvToModule",
    "atari_env_creator",
    "channels_first_uint8_space",
    "image_is_channels_first",
    "is_atari_env_id",
    "is_image_space",
    "is_minatar_env_id",
    "make_atari_env",
    "make_gym_env",
    "register_minatar_envs",
    "stack_frames",
    "stacked_observation_space",
    "to_channels_first_uint8",
]
