"""Training: pretraining, continued pretraining, SFT (full / LoRA / QLoRA) and DPO."""
