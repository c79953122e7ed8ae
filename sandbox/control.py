"""The control-API routes every sandbox with per-tenant knobs has: replace or clear a tenant's
faults, read or reset its request counts.

    add_knob_routes(router, "/companies/{company_id}", str, company_or_404, state.lock,
                    FaultsIn, put_faults)

gives ``PUT``/``DELETE .../faults`` and ``GET``/``DELETE .../requests`` below that path.
``put_faults(tenant, body)`` stores ``body``'s faults (the defaults when ``body`` is None) and
returns what the answer shows; the tenant's ``requests`` is a ``sandbox.knobs.RequestCounter``.

No ``from __future__ import annotations`` here: the endpoints' parameter types are the ones
given, and FastAPI reads them from the functions.
"""

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Path
from pydantic import BaseModel


def add_knob_routes(
    router: APIRouter,
    path: str,
    id_type: type,
    tenant_or_404: Callable[[Any], Any],
    lock: Any,
    faults_in: type[BaseModel],
    put_faults: Callable[[Any, Any], dict[str, Any]],
    on_reset_requests: Callable[[Any], None] | None = None,
) -> None:
    """``path`` ends in the tenant's id parameter, e.g. ``/businesses/{business_id}``;
    ``on_reset_requests(tenant)`` clears more than the counts (under the lock)."""
    id_name = path.rsplit("{", 1)[1].rstrip("}")

    @router.put(f"{path}/faults")
    async def set_faults(
        body: faults_in,  # type: ignore[valid-type]
        tenant_id: id_type = Path(alias=id_name),  # type: ignore[valid-type]
    ) -> dict[str, Any]:
        return put_faults(tenant_or_404(tenant_id), body)

    @router.delete(f"{path}/faults")
    async def clear_faults(
        tenant_id: id_type = Path(alias=id_name),  # type: ignore[valid-type]
    ) -> dict[str, Any]:
        return put_faults(tenant_or_404(tenant_id), None)

    @router.get(f"{path}/requests")
    async def request_counts(
        tenant_id: id_type = Path(alias=id_name),  # type: ignore[valid-type]
    ) -> dict[str, int]:
        tenant = tenant_or_404(tenant_id)
        with lock:
            return tenant.requests.view()

    @router.delete(f"{path}/requests")
    async def reset_request_counts(
        tenant_id: id_type = Path(alias=id_name),  # type: ignore[valid-type]
    ) -> dict[str, int]:
        tenant = tenant_or_404(tenant_id)
        with lock:
            tenant.requests.counts.clear()
            if on_reset_requests is not None:
                on_reset_requests(tenant)
        return {}
