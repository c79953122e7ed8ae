"""A TRAEDE imitation: the Export API for accounting entries (seed 001) under ``/v10`` and a
control API under ``/_sandbox/`` (companies with tokens, entries, marks, fault knobs).

Run it with ``python -m sandbox.traede --port 8093``; ``create_app()`` builds the ASGI app. The
endpoints, knobs and what is [seed] vs [assumed] are listed in ``sandbox.traede.app``.
"""
