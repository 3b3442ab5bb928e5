"""Evaluation: benchmarks scored on our engine, Django-free.

Modules: `extract` (answer extractors for generated outputs), `statistics` (intervals, pass@k,
paired tests, Bradley-Terry arena ratings, averages), `likelihood` and `perplexity` (scoring on a
model). Nothing is imported here, so importing one module never loads torch."""
