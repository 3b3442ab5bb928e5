"""The shared training / inference / evaluation / agent core.

Plain Python and torch, driven by spec dataclasses and a Reporter. It never imports Django,
the apps or the Celery tasks (tests/test_import_boundaries.py enforces it), so every job can
also run from a shell: `python -m workers.core <kind> ...`.
"""
