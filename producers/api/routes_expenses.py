"""/api/v1/expenses: ingest approved expenses from any source, and read them back.

Findity expenses arrive through its own producer; this endpoint is for other sources and for
operators. Ingest is idempotent per (source, source_ref).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Response
from sqlalchemy.orm import Session

from producers.api.deps import Caller, RequestSession, exports_caller
from producers.api.errors import BODY_ERROR_STATUSES, error_responses
from producers.api.schemas import ID_PATTERN, CreateExpense, ExpenseOut
from shared.db.models import Expense
from shared.domain import expenses as service
from shared.domain.errors import NotFound

router = APIRouter(prefix="/api/v1/expenses", tags=["expenses"],
                   responses=error_responses(401, 403, 422, 503))
API_SOURCE = "api"


def _out(expense: Expense, created: bool = False) -> ExpenseOut:
    return ExpenseOut(expense_id=expense.id, source=expense.source, source_ref=expense.source_ref,
                      status=expense.status, description=expense.description,
                      employee_name=expense.employee_name, expense_date=expense.expense_date,
                      currency=expense.currency, amount=expense.amount,
                      has_receipt=expense.receipt_filename is not None, created=created)


@router.post("", response_model=ExpenseOut, status_code=201,
             summary="Ingest an expense (idempotent per source_ref)", responses={
                 200: {"model": ExpenseOut,
                       "description": "Already ingested: its status was updated, nothing else"},
                 **error_responses(*BODY_ERROR_STATUSES)})
def ingest_expense(body: CreateExpense, response: Response,
                   caller: Caller = Depends(exports_caller),
                   session: Session = RequestSession) -> ExpenseOut:
    data = service.require_valid(service.ExpenseIn, {"source": API_SOURCE, **body.model_dump()})
    expense, created = service.ingest_expense(session, caller.organization_id, data)
    if not created:
        response.status_code = 200
    return _out(expense, created)


@router.get("/{expense_id}", response_model=ExpenseOut, responses=error_responses(404))
def get_expense(expense_id: str = Path(pattern=ID_PATTERN),
                caller: Caller = Depends(exports_caller),
                session: Session = RequestSession) -> ExpenseOut:
    expense = service.get_expense(session, caller.organization_id, expense_id)
    if expense is None:
        raise NotFound(f"expense {expense_id} does not exist")
    return _out(expense)
