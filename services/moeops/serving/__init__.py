"""The model server (`moeops serve`: OpenAI-compatible HTTP over a trained checkpoint) and static-shape export
(`moeops export`: torch.export, ONNX).

The map, top to bottom (an import only runs downwards: import-linter's serving contracts in pyproject.toml):

    __main__, serve_cli     `moeops serve`: settings, threads, the model, the app, uvicorn
    exporting/              `moeops export`: a checkpoint to a torch.export program or ONNX, via a static-shape MoE
    openai/                 the HTTP API: app and routes, request bodies (completions, chat), request plans, the
                            generation of a request's choices, and the answers (JSON or server-sent events)
    loader, load_reporter,  the checkpoint loaded for serving (with its tokenizer and chat template); the server's
    otel                    load on NATS for the autoscaler; its OpenTelemetry metrics
    latency, threads,       pure: latency histograms per choice; intra-op threads from the CPU limit; a conversation
    chat_template           as the model's prompt
    decoding/               the model worker: the engine (one thread owning the model, a dynamic batcher), batched
                            and single-sequence decoding with a KV cache, adaptive early exit (CALM), sampling, the
                            tokenizer codec, stop strings and the text assembler
"""
