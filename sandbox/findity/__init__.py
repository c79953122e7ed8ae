"""A Findity Connect imitation: OAuth token endpoint, Connect API under ``/api`` and a control
API under ``/_sandbox/`` (organizations, exports, webhooks, fault injection).

Run it with ``python -m sandbox.findity --port 8091``; ``create_app()`` builds the ASGI app.

Control API (snake_case JSON, our own; see ``schemas``):
- ``POST /_sandbox/organizations`` -> ``organization_id, client_id, client_secret, token_url,
  base_url`` (an isolated organization; ``base_url`` is the Connect base, ``.../api``).
- ``GET|PATCH /_sandbox/organizations/{org}``: view (tokens issued, Connect requests seen) or
  change format, webhook_url, recipient_configured, token_expires_in.
- ``POST /_sandbox/organizations/{org}/revoke-tokens``: the next Connect call gets a 401.
- ``POST /_sandbox/organizations/{org}/exports``: ``reports`` or ``generate``, plus
  ``send_webhook``, ``webhook_copies``, ``lose_webhook``.
- ``GET /_sandbox/organizations/{org}/exports/{id}[/status-updates]``.
- ``PUT|GET|DELETE /_sandbox/faults`` and ``/_sandbox/organizations/{org}/faults``:
  ``latency_ms``, ``fail_next``, ``updatestatus_down``, ``error_rate``.
- ``GET /_sandbox/healthz``.
"""
