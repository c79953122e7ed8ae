"""Local stack tooling: start every process on embedded defaults (`make run`, `make demo`).

Also used by the integration tests, so the tests start processes exactly the way a developer does.
"""
