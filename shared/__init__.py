"""Code shared by the producers (API, webhooks, scheduler) and the Celery workers."""
