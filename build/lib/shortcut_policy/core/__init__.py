"""The shared core: one objective, one sampler, one (t, d) embedding, EMA, and a DDPM/DDIM baseline."""
from .ema import EMA
from .embeddings import TimeStepEmbedding
from .objective import ShortcutObjective
from .sampler import sample
from .schedule import dyadic_step_sizes, step_schedule

__all__ = ["EMA", "ShortcutObjective", "TimeStepEmbedding", "dyadic_step_sizes", "sample", "step_schedule"]
