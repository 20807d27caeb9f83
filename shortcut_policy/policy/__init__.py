from .config import ObjectiveConfig, PolicyConfig
from .normalizer import Normalizer
from .policy import ShortcutPolicy, make_objective

__all__ = ["Normalizer", "ObjectiveConfig", "PolicyConfig", "ShortcutPolicy", "make_objective"]
