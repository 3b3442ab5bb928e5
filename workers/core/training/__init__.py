"""Training: pretraining, continued pretraining, SFT (full / LoRA / QLoRA) and DPO.

The same shape as workers/core/evaluation, a spec, a runner and the components it drives:
    spec         TrainSpec and its vocabularies (METHODS, METHOD_FORMATS...); no runner module, no
                 ML library, so the web side, pre-flight and kinds.py load it cheaply
    job          the runner: run_training trains here or launches torchrun; run_rank is each rank
    recipes      one recipe per method family, built from components, data, callbacks, checkpoints
    distributed  the torchrun parent's process machinery; templates, presets, tokenizer_train
    preflight    checks a spec (memory, data, a rendered sample) before it is queued
Imports go one way, never in a circle, and spec imports only the presets table
(tests/core/training/test_training_layout.py checks both packages). Nothing is imported here, so
importing one module never loads torch."""
