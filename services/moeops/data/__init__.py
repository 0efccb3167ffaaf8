"""Training data for the runtime: for now the built-in synthetic corpus (`synthetic://<domains>`).

The corpus exists to make expert specialisation measurable on one machine: six character-level domains with
different rules, each scored by exact match, and batches that are a pure function of (seed, step, row) so that
resuming or changing the world size never changes what the model sees.
"""

from .synthetic import (
    DOMAINS,
    CharTokenizer,
    Example,
    SyntheticCorpus,
    exact_match,
    greedy_generate,
    make_example,
    parse_source,
)

__all__ = [
    "DOMAINS",
    "CharTokenizer",
    "Example",
    "SyntheticCorpus",
    "exact_match",
    "greedy_generate",
    "make_example",
    "parse_source",
]
