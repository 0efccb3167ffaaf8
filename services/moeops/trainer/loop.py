"""The training loop: steps with exact loss normalisation on any layout, checkpoints, metrics, preemption.

Loss normalisation: each rank sums the cross-entropy over its answer tokens and divides by the *global*
count of answer tokens (one all-reduce), times the data-parallel degree because FSDP averages gradients. The
gradient is then exactly that of the global mean, whatever the split: a run on 4 ranks in any layout
follows the 1-rank run (tests/integration/test_parallel_parity.py).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from moeops.api.v1alpha1.runtime import TrainingRuntimeConfig
from moeops.checkpoint.layout import latest, read_meta
from moeops.checkpoint.weights import load_model_weights
from moeops.data.synthetic import SyntheticCorpus
from moeops.model import Transformer
from moeops.model.moe import MoE

from . import checkpoint, otel
from .corpus import build_corpus, save_run_config, save_tokenizer
from .distributed import World, all_reduce_sum
from .early_exit_loss import ExitLossRunner
from .errors import ConfigError
from .expert_parallel import ExpertDispatcher, ExpertStateSharding, shard_experts
from .expert_placement import move_experts
from .faults import delay_sequences
from .grads import clip_grad_norm, sharded_params, sync_sharded_grads
from .init_weights import materialise
from .metrics import MetricsSink, StepMetrics
from .parallelize import parallelize
from .plans import PlanChanges, StageLayers, TrainerShape, even_shares, first_row, splits_layers
from .preflight import check_config
from .rebalance import PlanFollower, PlanSource
from .runners import LocalRunner, PipelineRunner, StepRunner, micro_batches
from .schedule import lr_at
from .stage import TransformerStage, split_layers
from .topology import all_reduce, build_topology

ADAM_BETAS = (0.9, 0.95)
log = logging.getLogger("moeops.trainer")


@dataclass
class FitResult:
    last_step: int
    """The last completed step (steps are 1-based in logs and checkpoints)."""
    preempted: bool


def autocast_for(precision: str, device: torch.device) -> contextlib.AbstractContextManager[object]:
    """The compute precision asked, on any device: bf16 autocast (weights, gradients and optimizer state stay
    fp32) on GPU and on CPU alike, fp32 as is; fp16 is refused (exit 78), never replaced by another."""
    if precision == "fp16":
        raise ConfigError("training.precision fp16 is not supported by this trainer version: use bf16 or fp32")
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Stopwatch:
    """Accumulates the time spent inside `with` blocks (here: blocked in collectives)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self.seconds += time.perf_counter() - self._started


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, object]]:
    """No weight decay on norms (1-D parameters)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Trainer:
    def __init__(
        self,
        config: TrainingRuntimeConfig,
        world: World,
        sink: MetricsSink,
        checkpoint_root: Path,
        plans: PlanSource | None = None,
        sequence_delay_s: float = 0.0,
    ) -> None:
        """`plans`: where rank 0 reads rebalance plans (None: never rebalance). `sequence_delay_s` > 0 makes
        this rank that much slower per sequence (fault injection for tests of the rebalancer: faults.py)."""
        self.config, self.world, self.sink, self.checkpoint_root = config, world, sink, checkpoint_root
        self.sequence_delay_s = sequence_delay_s
        training, plan, arch = config.training, config.plan, config.architecture
        check_config(config, world.world_size)
        self.shares = even_shares(training.global_batch_size, plan.data)
        """Sequences of the global batch per data-parallel rank; rebalance plans change them."""
        self.micro = micro_batches(training.micro_batch_size, self.shares[0], plan.pipeline)
        autocast_for(training.precision, world.device)  # refuses an unsupported precision before any work
        if training.precision == "bf16" and world.device.type == "cpu" and world.is_main:
            # Honoured, not replaced: but bf16 autocast measured 4x slower than fp32 on CPU (docs/benchmarks.md)
            # and bf16 is the default, so say how to get the speed back.
            log.warning("training.precision bf16 on CPU: computing in bf16 autocast, ~4x slower than fp32 on CPU;"
                        " set training.precision: fp32 for speed")  # fmt: skip
        self.corpus = build_corpus(config)
        if world.is_main:
            save_tokenizer(self.corpus, checkpoint_root)
            save_run_config(config, checkpoint_root)
        self.topo = build_topology(world, plan)

        self.follower = PlanFollower(world, plans)
        self.saver = checkpoint.AsyncSaver(world)
        self.step = 0
        self.preempt_requested = False
        found = latest(checkpoint_root)
        stages = tuple((r.start, r.stop) for r in split_layers(arch.layers, plan.pipeline))
        if found:  # a pipeline split a rebalance plan chose survives a restart
            saved = read_meta(found[1]).get("stage_layers")
            if isinstance(saved, list) and splits_layers(saved, plan.pipeline, arch.layers):
                stages = tuple((start, stop) for start, stop in saved)
        self._build(stages)
        if plan.optimizer_offload and world.is_main:
            log.info("optimizer offload: FSDP2 keeps its shards, their gradients and AdamW state in host memory")
        if found:
            self.step = checkpoint.load(found[1], self.model, self.optimizer, world, self.sharding)

    def _build(self, stage_layers: StageLayers) -> None:
        """This rank's part of the model (pipeline stage, expert and tensor shards, FSDP2: built on the meta
        device, allocated once sharded), its step runner and optimizer, from the seed's initial weights (a
        checkpoint load follows when resuming)."""
        config, world, topo = self.config, self.world, self.topo
        training, plan, arch, micro = config.training, config.plan, config.architecture, self.micro
        self.stage_layers = stage_layers
        start, stop = stage_layers[topo.pp.rank]
        torch.manual_seed(training.seed)
        with torch.device("meta"):  # no storage: this rank allocates only what it holds (init_weights.py)
            full = Transformer(arch)
        self.model = TransformerStage(full, range(start, stop), first=topo.first_stage, last=topo.last_stage)
        self.model.set_loss_weights(training.aux_loss_coef / micro, training.z_loss_coef / micro)
        self.sharding: ExpertStateSharding | None = None
        if topo.ep.active:
            shard_experts(self.model, topo.ep, self.config.rebalance.expert_spare_slots)
            self.sharding = ExpertStateSharding(self.model, topo.ep, topo.expert_plane)
        if training.aux_loss_coef > 0 and topo.dp.active:  # the balancing loss sees the global batch's load
            for moe in self.moe_layers.values():
                moe.count_reducer = functools.partial(all_reduce, axis=topo.dp)
        gathers = parallelize(self.model, topo, plan)  # TP → activation checkpointing → FSDP2
        materialise(self.model, arch, training.seed, world.device, topo.ep.rank if topo.ep.active else None)
        if self.sequence_delay_s > 0:
            delay_sequences(self.model, self.sequence_delay_s)
        self.sharded = sharded_params(self.model, topo)
        precision = training.precision
        autocast = functools.partial(autocast_for, precision, world.device)
        self.runner: StepRunner
        if topo.pp.active:
            self.runner = PipelineRunner(self.model, topo, micro, autocast, world.device)
        elif training.early_exit.loss_weight > 0:
            exits = training.early_exit
            self.runner = ExitLossRunner(self.model, topo, micro, autocast, exits, arch.layers, gathers)
        else:
            self.runner = LocalRunner(self.model, topo, micro, autocast, gathers)
        # foreach kernels refuse a mix of DTensor and plain tensors (tensor parallelism, or FSDP beside
        # expert-parallel experts, leaves both).
        kinds = {isinstance(p, DTensor) for p in self.model.parameters()}
        self.optimizer = torch.optim.AdamW(
            _param_groups(self.model, training.weight_decay),
            lr=training.learning_rate,
            betas=ADAM_BETAS,
            foreach=None if len(kinds) == 1 else False,
        )

    def _set_lr(self, step: int) -> float:
        t = self.config.training
        lr = lr_at(step, peak=t.learning_rate, warmup=t.warmup_steps, total=t.steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def train_step(self) -> StepMetrics:
        """Run optimizer step `self.step + 1`: a span `train step`, its phases child spans (otel.py)."""
        with otel.span("train step", self.world.rank, step=self.step + 1):
            return self._train_step()

    def _train_step(self) -> StepMetrics:
        t, world, topo = self.config.training, self.world, self.topo
        started = time.perf_counter()
        if (changes := self.follower.due(self.step + 1)) is not None:
            with otel.span("plan apply", world.rank, step=self.step + 1, **{"plan.epoch": changes.epoch}):
                self._apply(changes)
        batch = self.corpus.rows(
            self.step, first_row(self.shares, topo.dp.rank), self.shares[topo.dp.rank], t.global_batch_size
        )
        inputs_BS, targets_BS = (x.to(world.device) for x in batch)
        comm = Stopwatch()
        with comm:
            answers = all_reduce((targets_BS != -100).sum().float(), topo.dp).clamp(min=1.0)

        with otel.span("forward backward", world.rank):
            ce_sum = self.runner.forward_backward(inputs_BS, targets_BS, answers)
        comm.seconds += self.runner.wait_seconds
        with comm, otel.span("gradient sync", world.rank):
            sync_sharded_grads(self.sharded, topo.dp.size, topo.ep)
        with otel.span("optimizer", world.rank):
            clip_grad_norm(self.model, self.sharded, topo, t.grad_clip)
            lr = self._set_lr(self.step)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

        with comm:
            ce_total, aux, counts_LE = self._reduce_stats(ce_sum)
        if t.bias_update_rate > 0:
            for layer, moe in self.moe_layers.items():
                moe.router.update_bias(counts_LE[layer], t.bias_update_rate)  # identical on every replica
        self.step += 1
        elapsed = time.perf_counter() - started
        return StepMetrics(
            step=self.step,
            rank=world.rank,
            loss=float(ce_total / answers),
            aux_loss=aux,
            tokens=int(inputs_BS.numel()),
            step_seconds=elapsed,
            compute_seconds=elapsed - comm.seconds,
            comm_seconds=comm.seconds,
            lr=lr,
            tokens_per_expert=counts_LE.long().tolist(),
            max_memory_bytes=torch.cuda.max_memory_allocated() if world.device.type == "cuda" else 0,
        )

    @property
    def moe_layers(self) -> dict[int, MoE]:
        blocks = {int(i): block for i, block in self.model.blocks.items()}
        return {i: block.moe for i, block in blocks.items() if isinstance(block.moe, MoE)}

    def _reduce_stats(self, ce_sum: Tensor | None) -> tuple[Tensor, float, Tensor]:
        """One all-reduce over every rank: the global cross-entropy sum (from the last stage), the mean
        balancing loss and the token counts of every layer (from each stage), each counted once per
        data-parallel rank (tensor-parallel replicas hold copies: only tp index 0 contributes)."""
        topo, arch = self.topo, self.config.architecture
        record = self.model.take_record()
        owner = topo.tp.rank == 0
        head = torch.zeros(2, device=self.world.device)
        counts_LE = torch.zeros(arch.layers, arch.experts, device=self.world.device)
        if owner:
            if ce_sum is not None:
                head[0] = ce_sum
            if record.aux_loss is not None:
                head[1] = record.aux_loss / self.micro
            for layer, counts_E in record.tokens_per_expert.items():
                counts_LE[layer] = counts_E.float()
        flat = all_reduce_sum(torch.cat([head, counts_LE.flatten()]), self.world)
        return flat[0], float(flat[1]) / topo.dp.size, flat[2:].view_as(counts_LE)

    def save(self, loss: float) -> None:
        """Start this step's checkpoint (written in the background: `checkpoint.AsyncSaver`)."""
        cfg = self.config.checkpoint
        meta = {"loss": loss, "job": self.config.job_name, "stage_layers": [list(r) for r in self.stage_layers]}
        with otel.span("checkpoint save", self.world.rank, step=self.step):
            self.saver.save(self.checkpoint_root, self.step, self.model, self.optimizer, meta, cfg.keep, self.sharding)

    def fit(self, max_steps: int | None = None) -> FitResult:
        """Train to `training.steps` (or `max_steps`), checkpointing every interval, at the end, and when
        preemption was requested (SIGTERM) — then stop with `preempted`. Returns once the last checkpoint is
        complete on disk."""
        total = min(self.config.training.steps, max_steps or self.config.training.steps)
        interval = self.config.checkpoint.interval_steps
        loss = float("nan")
        preempt = False
        while self.step < total and not preempt:
            metrics = self.train_step()
            loss = metrics.loss
            self.sink.publish(metrics)
            preempt = self.follower.agree(self.preempt_requested, self.shape)
            if preempt or self.step % interval == 0 or self.step == total:
                self.save(loss)
            else:
                self.saver.poll()  # the last checkpoint complete on disk as soon as its files are
        self.saver.wait()
        return FitResult(self.step, preempted=preempt)

    def shape(self) -> TrainerShape:
        plan, arch = self.config.plan, self.config.architecture
        return TrainerShape(
            global_batch=self.config.training.global_batch_size,
            data=plan.data,
            micro_batches=self.micro,
            pipeline=plan.pipeline,
            expert=plan.expert,
            layers=arch.layers,
            experts=arch.experts,
            stage_layers=self.stage_layers,
            spare_slots=self.config.rebalance.expert_spare_slots,
        )

    def _apply(self, changes: PlanChanges) -> None:
        """Switch to a plan's data shares, expert placement and pipeline split (every rank, same step)."""
        if changes.shares is not None:
            self.shares = changes.shares
        if changes.placements is not None:
            for layer, moe in self.moe_layers.items():
                assert isinstance(moe.dispatcher, ExpertDispatcher)
                new = changes.placements[layer]
                move_experts(moe.experts, self.optimizer, self.topo.ep, moe.dispatcher.placement, new)
                moe.dispatcher.placement = new
        if changes.stage_layers is not None:
            # Layers change hands with their optimizer state: through a checkpoint, which is layout-free.
            self.save(float("nan"))
            path = self.saver.wait()
            assert path is not None
            self._build(changes.stage_layers)
            self.step = checkpoint.load(path, self.model, self.optimizer, self.world, self.sharding)
        if self.world.is_main:
            log.info("plan epoch %d applied before step %d: shares %s, experts %s, stages %s", changes.epoch,
                     self.step + 1, list(self.shares), _placed(changes),
                     list(self.stage_layers))  # fmt: skip


def _placed(changes: PlanChanges) -> str:
    if changes.placements is None:
        return "kept"
    return "moved, some replicated" if any(p.replicated for p in changes.placements) else "moved"


def evaluate(
    config: TrainingRuntimeConfig,
    corpus: SyntheticCorpus,
    checkpoint_path: Path,
    device: torch.device,
    count_per_domain: int,
) -> dict[str, float]:
    """Exact-match accuracy per domain with greedy decoding, on the whole model loaded from a checkpoint
    (whatever layout wrote it); one process, no collectives."""
    from moeops.data.synthetic import exact_match, greedy_generate

    model = Transformer(config.architecture)
    load_model_weights(checkpoint_path, model)
    model.to(device).eval()
    with torch.no_grad():
        return exact_match(
            lambda prompt, n: greedy_generate(model, prompt.to(device), n).cpu(),
            corpus,
            count_per_domain,
        )
