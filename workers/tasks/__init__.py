"""Thin Celery tasks: load the row, claim it, build the spec, call the core, record the outcome.

Workers import the task modules through the Celery `imports` setting (puyu_site/celery.py);
this package's __init__ stays empty so the web process can import `workers.tasks.catalog`
without pulling in every task module."""
