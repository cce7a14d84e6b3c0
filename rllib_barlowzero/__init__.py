"""BarlowZero (EfficientZero with a Barlow Twins consistency loss) as a Ray RLlib algorithm."""

from ray.tune.registry import register_trainable

from rllib_barlowzero.barlowzero import BarlowZero, BarlowZeroConfig

register_trainable("BarlowZero", BarlowZero)

__all__ = ["BarlowZero", "BarlowZeroConfig"]
__version__ = "0.1.0"
