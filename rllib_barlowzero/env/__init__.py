"""Environments and env-side connectors: EfficientZero Atari pipeline, frame stacking."""

from rllib_barlowzero.env.atari import (
    ATARI_ENV_CONFIG_KEYS,
    atari_env_creator,
    is_atari_env_id,
    make_atari_env,
    register_atari_env,
)
from rllib_barlowzero.env.frame_stacking import (
    FrameStackingEnvToModule,
    stack_frames,
    stacked_observation_space,
)

__all__ = [
    "ATARI_ENV_CONFIG_KEYS",
    "FrameStackingEnvToModule",
    "atari_env_creator",
    "is_atari_env_id",
    "make_atari_env",
    "register_atari_env",
    "stack_frames",
    "stacked_observation_space",
]
