"""Celery workers: thin tasks (tasks.py) over plain functions (export_job.py, sweeper.py)."""
