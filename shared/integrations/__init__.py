"""Clients of external systems: targets (accounting systems) and sources (expense platforms).

Every client has the same shape: one class owning one long-lived ``httpx.Client``, a single
``_request()`` that turns HTTP outcomes into the error taxonomy of ``errors.py``, and pydantic
models for what it returns.
"""
