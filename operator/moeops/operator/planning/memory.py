"""Peak memory per GPU of a parallel plan: a first-order estimate to check that a plan fits.

Assumptions (those of the trainer, checked against it by tests/integration/test_memory_vs_trainer.py): data
parallelism shards parameters, gradients and AdamW state over the data ranks (FSDP2 `fully_shard`, ZeRO-3 style;
the shards stay fp32 whatever the compute precision) and all-gathers one block at a time with one block
prefetched; under expert parallelism the routed experts are split over the EP group instead and replicated over
the rest of the data ranks (FSDP does not shard them: `moeops.trainer.parallelize`); tensor
parallelism with sequence parallelism divides activations by the TP degree; flash attention (no s² scores);
1F1B pipeline schedule, whose first stage holds `pipeline` micro-batches of `layers/pipeline` blocks, i.e. the
activations of all layers for one micro-batch; activation checkpointing keeps only each block's input.
"""

from __future__ import annotations

from dataclasses import dataclass

from moeops.api.v1alpha1.presets import Architecture

from .sizing import model_size

GIB = 1024**3
WORKSPACE_BYTES = 1 * GIB  # CUDA context, NCCL buffers, allocator slack.
MASTER_BYTES = 4 + 4  # fp32 weight and gradient shards (compute precision only in the gathered copies).
ADAMW_STATE_BYTES = 4 + 4  # fp32 exp_avg, exp_avg_sq.


@dataclass(frozen=True)
class Degrees:
    """Parallel degrees and memory switches of one plan."""

    data: int
    tensor: int
    pipeline: int
    expert: int = 1
    activation_checkpointing: bool = False
    optimizer_offload: bool = False

    @property
    def world_size(self) -> int:
        return self.data * self.tensor * self.pipeline


def bytes_per_element(precision: str) -> int:
    return 4 if precision == "fp32" else 2


def model_state_bytes_per_gpu(arch: Architecture, d: Degrees) -> int:
    """Parameters + gradients + AdamW state one rank holds on its GPU. With optimizer offload FSDP2 keeps its
    shards in host memory (CPUOffloadPolicy: weights, gradients and the AdamW state created beside them); they are
    still counted at their weight and gradient bytes, an upper bound that keeps a plan's host share bounded while
    host memory is not modelled (tests/integration/test_memory_vs_trainer.py checks the bound). The routed
    experts under expert parallelism are not FSDP's: they and their AdamW state stay on the GPU, offload or not."""
    size = model_size(arch)
    fsdp_per_param = MASTER_BYTES + (0 if d.optimizer_offload else ADAMW_STATE_BYTES)
    if d.expert == 1:  # FSDP shards the experts with their block
        return int(size.total_params * fsdp_per_param / d.world_size)
    experts_per_rank = size.expert_params / (d.expert * d.tensor * d.pipeline)
    return int(
        size.dense_params * fsdp_per_param / d.world_size + experts_per_rank * (MASTER_BYTES + ADAMW_STATE_BYTES)
    )


def estimate_bytes_per_gpu(arch: Architecture, d: Degrees, micro_batch_size: int, precision: str) -> int:
    elem = bytes_per_element(precision)
    size = model_size(arch)
    sharded_states = model_state_bytes_per_gpu(arch, d)

    per_expert = 3 * arch.d_model * arch.ffn_hidden
    block_params = (size.dense_params / arch.layers) + arch.experts * per_expert / d.expert
    gathered_blocks = 2 * block_params * elem / d.tensor

    tokens = micro_batch_size * arch.seq_len
    block_activation_elems = tokens * (10 * arch.d_model + 3 * (arch.top_k + arch.shared_experts) * arch.ffn_hidden)
    block_activations = block_activation_elems * elem / d.tensor
    if d.activation_checkpointing:
        stored = arch.layers * tokens * arch.d_model * elem / d.tensor + block_activations
    else:
        stored = arch.layers * block_activations
    logits = tokens * arch.vocab_size * 4 / d.tensor  # fp32 logits for the loss, on the last stage.
    return int(sharded_states + gathered_blocks + stored + logits + WORKSPACE_BYTES)
