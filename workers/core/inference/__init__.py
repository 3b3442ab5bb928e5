"""Inference: the serving engine, its backends and the replica loop."""
