"""Celery workers: thin tasks (tasks.py) over plain functions (export_job.py, source_jobs.py) and the one retry policy (retry_policy.py)."""
