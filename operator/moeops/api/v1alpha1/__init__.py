"""moeops.dev/v1alpha1: the MoETrainingJob and InferenceService resources."""

from . import inferenceservice, trainingjob
from .common import VERSION, Condition
from .inferenceservice import InferenceServiceSpec, InferenceServiceStatus
from .presets import PRESETS, Architecture
from .trainingjob import MoETrainingJobSpec
from .trainingjob_status import MoETrainingJobStatus

__all__ = [
    "PRESETS",
    "VERSION",
    "Architecture",
    "Condition",
    "InferenceServiceSpec",
    "InferenceServiceStatus",
    "MoETrainingJobSpec",
    "MoETrainingJobStatus",
    "inferenceservice",
    "trainingjob",
]
