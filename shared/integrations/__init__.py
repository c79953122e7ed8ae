"""Clients of external systems: targets (accounting systems) and sources (expense platforms).

Every client has the same shape: one class owning one ``http.VendorHttp`` (the HTTP base: one
long-lived ``httpx.Client``, and the one mapping of HTTP outcomes to the error taxonomy of
``errors.py``), its vendor's hooks (session, error bodies), and pydantic models for what it
returns.
"""
