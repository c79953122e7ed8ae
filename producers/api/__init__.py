"""The REST API (FastAPI): /api/v1/accounting-exports, /api/v1/expenses, /api/v1/admin, /healthz."""
