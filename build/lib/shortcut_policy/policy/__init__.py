from .config import PolicyConfig
from .normalizer import Normalizer
from .policy import ShortcutPolicy

__all__ = ["Normalizer", "PolicyConfig", "ShortcutPolicy"]
