"""Systems that exist only for the tests, registered through ``AIC_EXTRA_SYSTEMS``."""
