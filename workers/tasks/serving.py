"""Serving replicas (placeholder until apps/serving lands)."""
