"""Model specs (pure data) and, in ``latentq.models.loader``, the code that loads them."""

from .registry import BUILTIN_MODELS, ModelSpec, Registry, load_registry

__all__ = ["BUILTIN_MODELS", "ModelSpec", "Registry", "load_registry"]
