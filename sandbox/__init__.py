"""Imitations of the external systems (expense platforms, accounting systems) for tests and
the dev stack: real HTTP servers with a control API under ``/_sandbox/``."""
