"""The model worker and its decoding: `engine` (one thread owning the model, a dynamic batcher in front of it, the
load counters), `batched` and `decode` (decoding steps with a KV cache, adaptive early exit), `early_exit` (CALM's
confidence rules), `sampling` (greedy, temperature, top-k/top-p, penalties), `codec` (the model's tokenizer),
`stops` and `assembler` (stop strings and the text a client sees as tokens arrive)."""
