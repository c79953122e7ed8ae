"""Contract tests: our clients against mocks of the vendors' own OpenAPI specs."""
