"""Evaluation: benchmarks scored on our engine, Django-free.

Modules: `spec` (the evaluate job spec and the version hashes), `runner` (the run, its prediction
cache and per-sample rows), `targets` (local weights or a remote generator behind one interface),
`clients` (a deployment over the serving protocol, an allowlisted OpenAI-compatible endpoint),
`judge` (LLM as judge: 1-10 ratings and pairwise verdicts), `extract` (answer extractors for
generated outputs), `statistics` (intervals, pass@k, paired tests, Bradley-Terry arena ratings,
averages), `likelihood` and `perplexity` (scoring on a model). Nothing is imported here, so
importing one module never loads torch."""
