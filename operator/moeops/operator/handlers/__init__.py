"""kopf handlers: read the object, call the pure layers, write children and status. Nothing else.

Importing this package registers every handler with kopf's default registry.
"""

from . import autoscale, data_filter, serving, setup, status_loop, training

__all__ = ["autoscale", "data_filter", "serving", "setup", "status_loop", "training"]
