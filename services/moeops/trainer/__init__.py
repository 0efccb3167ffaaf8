"""The distributed trainer: one process per GPU (or CPU rank), driven by the operator's resolved config.

Training infrastructure only; the model's architecture lives in `moeops.model`. The map, top to bottom (an import
only runs downwards: import-linter's trainer contract in pyproject.toml):

    launch, worker      `moeops train` starts the ranks with torch's elastic launcher; each `worker` loads the
                        config, trains, checkpoints and exits with a code the Job's podFailurePolicy understands
    loop                the training loop: steps, exact loss normalisation on any layout, checkpoints, metrics,
                        preemption (SIGTERM → checkpoint → exit)
    step pieces         `runners` (micro-batches: local accumulation or the pipeline schedule), `grads` (gradients
                        FSDP does not own, global norm clip), `schedule` (learning rate), `early_exit_loss`
                        (LayerSkip), `corpus` (the job's data), `checkpoint` (DCP async save and resume in
                        `moeops.checkpoint`'s format), `metrics` and `otel` (per-step metrics, never blocking),
                        `rebalance` and `plans` (follow the rebalancer's plans, all ranks at the same step),
                        `faults` (a rank made slow, for tests and demos), `model_state` (bytes of weights,
                        gradients and optimizer state a rank holds: what the planner's memory model counts)
    parallelism         `parallelize` (TP → activation checkpointing → FSDP2 over the data ranks),
                        `tensor_parallel` (DTensor, Megatron split), `expert_parallel` (E/P experts per rank,
                        all-to-all), `expert_placement` and `expert_replicas` (moving and replicating experts),
                        `stage` (a rank's contiguous range of layers for pipeline parallelism)
    process group       `topology` (pipeline × data × tensor mesh, expert parallel carved out of data),
                        `distributed` (gloo on CPU, NCCL on GPU), `preflight` and `failure_line` (torch-free: a
                        config refused before any rank starts; the one line a failed run ends with), `errors`
                        (exit codes)
"""
