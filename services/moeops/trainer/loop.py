"""The training loop: data-parallel steps with exact loss normalisation, checkpoints, metrics, preemption.

Loss normalisation: each rank sums the cross-entropy over its answer tokens and divides by the *global*
count of answer tokens (one all-reduce), times the world size because DDP averages gradients. The gradient
is then exactly that of the global mean, whatever the split: a run on 2 ranks follows the 1-rank run.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from moeops.api.v1alpha1.runtime import TrainingRuntimeConfig
from moeops.data.synthetic import CharTokenizer, SyntheticCorpus, parse_source
from moeops.model import Transformer
from moeops.model.moe import MoE

from . import checkpoint
from .distributed import World, all_reduce_sum
from .errors import ConfigError
from .expert_parallel import (
    ExpertGroups,
    ExpertStateSharding,
    build_expert_groups,
    clip_grad_norm,
    expert_param_names,
    shard_experts,
    sync_expert_grads,
)
from .metrics import MetricsSink, StepMetrics
from .schedule import lr_at

ADAM_BETAS = (0.9, 0.95)


@dataclass
class FitResult:
    last_step: int
    """The last completed step (steps are 1-based in logs and checkpoints)."""
    preempted: bool


def build_corpus(config: TrainingRuntimeConfig) -> SyntheticCorpus:
    source = config.data.source
    if not source.startswith("synthetic://"):
        raise ConfigError(f"data.source {source!r}: this trainer version reads synthetic:// corpora only")
    try:
        domains = parse_source(source)
    except ValueError as exc:
        raise ConfigError(f"data.source: {exc}") from exc
    tokenizer = CharTokenizer()
    if config.architecture.vocab_size < tokenizer.vocab_size:
        raise ConfigError(
            f"architecture.vocabSize ({config.architecture.vocab_size}) is smaller than the synthetic corpus's"
            f" vocabulary ({tokenizer.vocab_size})"
        )
    return SyntheticCorpus(domains, seed=config.training.seed, seq_len=config.architecture.seq_len, tokenizer=tokenizer)


def autocast_for(precision: str, device: torch.device) -> contextlib.AbstractContextManager[object]:
    """bf16 autocast on GPU (weights and optimizer stay fp32); CPU runs compute in fp32 whatever is asked."""
    if precision == "fp16":
        raise ConfigError("training.precision fp16 is not supported by this trainer version: use bf16")
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, object]]:
    """No weight decay on norms (1-D parameters)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Trainer:
    def __init__(self, config: TrainingRuntimeConfig, world: World, sink: MetricsSink, checkpoint_root: Path) -> None:
        self.config, self.world, self.sink, self.checkpoint_root = config, world, sink, checkpoint_root
        training = config.training
        if training.global_batch_size % world.world_size:
            raise ConfigError(
                f"training.globalBatchSize ({training.global_batch_size}) must be divisible by the"
                f" data-parallel degree ({world.world_size})"
            )
        self.batch_per_rank = training.global_batch_size // world.world_size
        autocast_for(training.precision, world.device)  # refuses an unsupported precision before any work
        self.corpus = build_corpus(config)
        torch.manual_seed(training.seed)  # the same initial weights on every rank
        self.model = Transformer(config.architecture).to(world.device)
        self.moe_layers = [m for m in self.model.modules() if isinstance(m, MoE)]
        self.experts: ExpertGroups | None = None
        self.sharding: ExpertStateSharding | None = None
        if config.plan.expert > 1:
            self.experts = build_expert_groups(world, config.plan.expert, config.architecture.experts)
            shard_experts(self.model, self.experts)
            self.sharding = ExpertStateSharding(self.model, self.experts)
            # Expert shards differ by rank: DDP must not average them (sync_expert_grads reduces them).
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(  # type: ignore[no-untyped-call]
                self.model, expert_param_names(self.model)
            )
        self.ddp: nn.Module = (
            DistributedDataParallel(self.model, device_ids=None if world.device.type == "cpu" else [world.device])
            if world.distributed
            else self.model
        )
        self.optimizer = torch.optim.AdamW(
            _param_groups(self.model, training.weight_decay), lr=training.learning_rate, betas=ADAM_BETAS
        )
        self.step = 0
        self.preempt_requested = False
        found = checkpoint.latest(checkpoint_root)
        if found:
            self.step = checkpoint.load(found[1], self.model, self.optimizer, world, self.sharding)

    def _set_lr(self, step: int) -> float:
        t = self.config.training
        lr = lr_at(step, peak=t.learning_rate, warmup=t.warmup_steps, total=t.steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def train_step(self) -> StepMetrics:
        """Run optimizer step `self.step + 1`."""
        t, world = self.config.training, self.world
        started = time.perf_counter()
        inputs_BS, targets_BS = (
            x.to(world.device) for x in self.corpus.batch(self.step, self.batch_per_rank, world.rank, world.world_size)
        )
        comm = 0.0
        counted = time.perf_counter()
        answers = all_reduce_sum((targets_BS != -100).sum().float(), world).clamp(min=1.0)
        comm += time.perf_counter() - counted

        with autocast_for(t.precision, world.device):
            out = self.ddp(inputs_BS)
        ce_sum = F.cross_entropy(out.logits_BSV.flatten(0, 1).float(), targets_BS.flatten(), reduction="sum")
        loss = ce_sum / answers * world.world_size + t.aux_loss_coef * out.aux_loss + t.z_loss_coef * out.z_loss
        loss.backward()
        if self.experts is not None:
            synced = time.perf_counter()
            sync_expert_grads(self.model, self.experts, world.world_size)
            comm += time.perf_counter() - synced
        clip_grad_norm(self.model, self.experts, t.grad_clip)
        lr = self._set_lr(self.step)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

        reduced = time.perf_counter()
        stats = all_reduce_sum(torch.stack([ce_sum.detach().float(), out.aux_loss.detach().float()]), world)
        counts_LE = out.tokens_per_expert_LE
        if counts_LE is not None:
            counts_LE = all_reduce_sum(counts_LE.clone(), world)
        comm += time.perf_counter() - reduced
        if counts_LE is not None and t.bias_update_rate > 0:
            for layer, counts_E in zip(self.moe_layers, counts_LE, strict=True):
                layer.router.update_bias(counts_E, t.bias_update_rate)  # identical on every rank
        self.step += 1
        elapsed = time.perf_counter() - started
        return StepMetrics(
            step=self.step,
            rank=world.rank,
            loss=float(stats[0] / answers),
            aux_loss=float(stats[1]) / world.world_size,
            tokens=int(inputs_BS.numel()),
            step_seconds=elapsed,
            compute_seconds=elapsed - comm,
            comm_seconds=comm,
            lr=lr,
            tokens_per_expert=[] if out.tokens_per_expert_LE is None else out.tokens_per_expert_LE.tolist(),
            max_memory_bytes=torch.cuda.max_memory_allocated() if world.device.type == "cuda" else 0,
        )

    def save(self, loss: float) -> Path:
        cfg = self.config.checkpoint
        meta = {"loss": loss, "job": self.config.job_name}
        return checkpoint.save(
            self.checkpoint_root, self.step, self.model, self.optimizer, self.world, meta, cfg.keep, self.sharding
        )

    def fit(self, max_steps: int | None = None) -> FitResult:
        """Train to `training.steps` (or `max_steps`), checkpointing every interval, at the end, and when
        preemption was requested (SIGTERM) — then stop with `preempted`."""
        total = min(self.config.training.steps, max_steps or self.config.training.steps)
        interval = self.config.checkpoint.interval_steps
        loss = float("nan")
        while self.step < total:
            metrics = self.train_step()
            loss = metrics.loss
            self.sink.publish(metrics)
            preempt = self._agree(self.preempt_requested)
            if preempt or self.step % interval == 0 or self.step == total:
                self.save(loss)
            if preempt:
                return FitResult(self.step, preempted=True)
        return FitResult(self.step, preempted=False)

    def _agree(self, flag: bool) -> bool:
        """True on every rank if any rank got the signal (they must checkpoint the same step together)."""
        value = torch.tensor([1.0 if flag else 0.0])
        return bool(all_reduce_sum(value, self.world).item() > 0)


def evaluate(trainer: Trainer, count_per_domain: int) -> dict[str, float]:
    """Exact-match accuracy per domain with greedy decoding (call on one rank)."""
    from moeops.data.synthetic import exact_match, greedy_generate

    model = trainer.model
    model.eval()
    try:
        with torch.no_grad():
            return exact_match(
                lambda prompt, n: greedy_generate(model, prompt.to(trainer.world.device), n).cpu(),
                trainer.corpus,
                count_per_domain,
            )
    finally:
        model.train()
