"""A Brex imitation: the Expenses API (seed 003, Brex's spec in shared/specs/brex/) under
``/v1``, pre-signed receipt links under ``/_s3/`` and a control API under ``/_sandbox/``
(accounts with user tokens, expenses, after-the-fact changes, memo writes, fault knobs).

Run it with ``python -m sandbox.brex --port 8094``; ``create_app()`` builds the ASGI app. The
endpoints, knobs and what is [spec]/[doc] vs [assumed] are listed in ``sandbox.brex.app``.
"""
