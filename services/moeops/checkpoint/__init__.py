"""The checkpoint format, in one place for the trainer that writes it and the server and exporter that read it.

A run's checkpoint root (`checkpoint.directory`, e.g. `<work-dir>/<job>/checkpoints`) holds:

```
config.json               the run's resolved TrainingRuntimeConfig (its `architecture` rebuilds the model)
tokenizer.json            the trained BPE tokenizer, when the run's data was text (absent: the synthetic corpus)
step-00000042/            one complete checkpoint per kept step (a torch.distributed.checkpoint directory)
  .metadata, *.distcp     DCP: {"model": full-model parameter names, "optim": AdamW state} (layout-free)
  rank-00000.pt           each rank's RNG state and step
  meta.json               step, world size, loss, job, pipeline split
.step-00000043.tmp/       a save in progress (renamed to its final name once complete; ignored by readers)
```

- `layout`: the names above, the newest complete step, meta.json, the run config's architecture (pure: no torch).
- `weights`: a checkpoint's model weights into an unsharded model in one process (torch, no process group).

The trainer's distributed save and resume (`moeops.trainer.checkpoint`) writes this layout; serving and
`moeops export` read it through these modules only.
"""
