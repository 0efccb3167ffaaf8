"""A checkpoint's model weights into an unsharded model, in this process alone (serving, export, evaluation).

No collectives, so it works on one rank of a running job or in a process without a process group: DCP reads the
full-model parameter names the trainer saved under `MODEL_KEY`, whatever layout wrote them.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

from moeops.api.v1alpha1.presets import Architecture
from moeops.model import Transformer

from .layout import MODEL_KEY, CheckpointError


def load_model_weights(path: Path, model: nn.Module) -> None:
    """Load the weights of the checkpoint in `path` (a step directory) into `model`."""
    state = {MODEL_KEY: model.state_dict()}
    with warnings.catch_warnings():
        # DCP warns that it "assumes the intent is to load in a single process": it is.
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
        dcp_load(state, checkpoint_id=path, no_dist=True)
    model.load_state_dict(state[MODEL_KEY])


def load_model(step_path: Path, arch: Architecture) -> Transformer:
    """The model of `arch` with the checkpoint's weights, in eval mode; CheckpointError when they do not fit."""
    model = Transformer(arch)
    try:
        load_model_weights(step_path, model)
    except (CheckpointException, RuntimeError, ValueError, KeyError, OSError) as exc:
        # CheckpointException is a BaseException; a state dict that does not fit the config is a RuntimeError.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{step_path}: cannot load the model weights for this architecture: {first}") from exc
    return model.eval()
