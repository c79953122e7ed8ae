"""Producers put export jobs on the queues: the REST API, webhook receivers, the scheduler, the CLI."""
