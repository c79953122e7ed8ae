"""A BillDiary "Integration API" imitation (the expenses part): the endpoints our client uses
under ``/api/v1/integration`` and a control API under ``/_sandbox/`` (businesses with their
settings, users, credentials, locations, categories and tax rates; what was stored; fault knobs;
request counts).

Run it with ``python -m sandbox.billdiary --port 8300``; ``create_app()`` builds the ASGI app.
"""
