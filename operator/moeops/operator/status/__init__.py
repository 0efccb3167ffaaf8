"""Pure status computation: observed children in, conditions, counters and events out."""

from .conditions import Event, StatusUpdate, set_condition
from .serving import serving_status
from .training import invalid_spec_status, is_finished, plan_status, rebalance_status, training_status, ttl_expiry

__all__ = [
    "Event",
    "StatusUpdate",
    "invalid_spec_status",
    "is_finished",
    "plan_status",
    "rebalance_status",
    "serving_status",
    "set_condition",
    "training_status",
    "ttl_expiry",
]
