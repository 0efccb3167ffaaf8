"""Pure builders: a custom resource's spec in, the desired child objects out (plain dicts)."""

from .child import Child

__all__ = ["Child"]
