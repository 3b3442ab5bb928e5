"""Training jobs (placeholder until apps/training lands)."""
