"""A Tripletex API v2 imitation: the endpoints our client uses under ``/v2`` and a control API
under ``/_sandbox/`` (companies, the vouchers they hold, fault knobs, request counts).

Run it with ``python -m sandbox.tripletex --port 8092``; ``create_app()`` builds the ASGI app.
"""
