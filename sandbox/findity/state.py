"""The sandbox's in-memory world: organizations, tokens, exports, status reports and faults.

Every mutation happens under one lock and never awaits while holding it, so the state is
consistent whether the app's handlers run on the event loop or in a thread pool. Endpoints
turn ``SandboxError`` into Findity's ``{"code", "message"}`` body.
"""

from __future__ import annotations

import random
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sandbox import knobs
from sandbox.findity.generator import (
    BuiltVoucher,
    Format,
    Report,
    build_vouchers,
    new_id,
)
from sandbox.knobs import rolls, take_fail_rule

# Export statuses [assumed] and report states [doc].
UNPROCESSED, PROCESSED, FAILED = "UNPROCESSED", "PROCESSED", "FAILED"
EXPORT_STATUSES = (UNPROCESSED, PROCESSED, FAILED)
READY_TO_SEND, TRANSFER, SENT = "READY_TO_SEND", "TRANSFER", "SENT"

SUCCESS = "SUCCESS"
_SUCCESS_KEYS = {"id", "status", "bookingDate", "voucherNumber", "informationText"}
_FAILED_KEYS = {"id", "status", "errorText"}


class SandboxError(Exception):
    """An error answered as ``{"code", "message"}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class OAuthError(Exception):
    """A token endpoint error, answered the OAuth 2.0 way: ``{"error", "error_description"}``."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def iso_z(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- faults -----------------------------------------------------------------------------------


@dataclass
class FailRule(knobs.FailRule):
    """``sandbox.knobs.FailRule`` with Findity's error ``code`` and ``message``."""

    retry_after: str | None = None
    code: str | None = None
    message: str | None = None


@dataclass
class Faults:
    latency_ms: int = 0
    fail_next: list[FailRule] = field(default_factory=list)
    updatestatus_down: bool = False
    error_rate: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "latency_ms": self.latency_ms,
            "fail_next": [vars(rule).copy() for rule in self.fail_next if rule.count > 0],
            "updatestatus_down": self.updatestatus_down,
            "error_rate": self.error_rate,
        }


@dataclass
class FaultDecision:
    latency_seconds: float = 0.0
    error: SandboxError | None = None


_DEFAULT_FAULT_CODES = {429: "RATE_LIMITED", 500: "INTERNAL_ERROR", 502: "BAD_GATEWAY",
                        503: "SERVICE_UNAVAILABLE", 504: "GATEWAY_TIMEOUT", 401: "UNAUTHORIZED"}


def _rule_error(rule: FailRule) -> SandboxError:
    headers = {"Retry-After": rule.retry_after} if rule.retry_after is not None else {}
    code = rule.code or _DEFAULT_FAULT_CODES.get(rule.status, "INJECTED_FAULT")
    message = rule.message or f"injected fault: HTTP {rule.status}"
    return SandboxError(rule.status, code, message, headers)


# --- organizations, tokens, exports -----------------------------------------------------------


@dataclass
class Organization:
    id: str
    name: str
    external_organization_id: str | None
    client_id: str
    client_secret: str
    verification_lists_type: Format
    webhook_url: str | None
    client_application_id: str
    recipient_id: str
    recipient_name: str = "Accounting Integration Client"
    recipient_configured: bool = True
    token_expires_in: int = 3600
    webhook_timeout_seconds: float = 10.0
    # What a repeated SUCCESS gets: "409" VOUCHER_ALREADY_PROCESSED, "200", or "400" (undocumented)
    repeated_success_answer: str = "409"
    tokens_issued: int = 0
    faults: Faults = field(default_factory=Faults)
    requests: deque = field(default_factory=lambda: deque(maxlen=2000))

    def control_view(self) -> dict[str, Any]:
        return {
            "organization_id": self.id,
            "name": self.name,
            "external_organization_id": self.external_organization_id,
            "client_id": self.client_id,
            "verification_lists_type": self.verification_lists_type.value,
            "webhook_url": self.webhook_url,
            "recipient_configured": self.recipient_configured,
            "token_expires_in": self.token_expires_in,
            "webhook_timeout_seconds": self.webhook_timeout_seconds,
            "repeated_success_answer": self.repeated_success_answer,
            "tokens_issued": self.tokens_issued,
            "faults": self.faults.to_dict(),
            "requests": list(self.requests),
        }


@dataclass
class AccessToken:
    organization_id: str
    expires_at: float  # time.monotonic()


@dataclass
class StoredContent:
    data: bytes
    content_type: str
    filename: str | None
    updated_at: datetime


@dataclass
class WebhookLog:
    url: str | None
    requested_copies: int
    lost: bool = False
    skipped_reason: str | None = None
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False

    @property
    def failed(self) -> bool:
        """Findity's rule [doc]: a failed send or any answer but 200 is a failure."""
        return any(d["status_code"] != 200 for d in self.deliveries)

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "requested_copies": self.requested_copies,
            "lost": self.lost,
            "skipped_reason": self.skipped_reason,
            "deliveries": list(self.deliveries),
            "done": self.done,
            "failed": self.failed,
        }


@dataclass
class Export:
    id: str
    organization: Organization
    sequence: int
    created_at: datetime
    verification_lists_type: Format
    reports: list[Report]
    vouchers: list[BuiltVoucher]
    webhook: WebhookLog
    status: str = UNPROCESSED
    report_states: dict[str, str] = field(default_factory=dict)
    voucher_results: dict[str, dict[str, Any]] = field(default_factory=dict)
    status_updates: list[dict[str, Any]] = field(default_factory=list)
    content: StoredContent | None = None
    # Set when the webhook failed: Findity then moves the reports back to "Ready to send".
    reports_returned_to_ready: bool = False
    # Fault knobs of this export (time.monotonic() deadlines; see schemas.ExportIn).
    readable_from: float = 0.0
    basis_readable_from: float = 0.0
    bad_basis: dict[str, str] = field(default_factory=dict)  # voucher id -> fault
    oversized_basis_bytes: int = 0

    def voucher(self, voucher_id: str) -> BuiltVoucher | None:
        return next((v for v in self.vouchers if v.id == voucher_id), None)

    def check_readable(self) -> None:
        """404 while the export is "not yet readable" (the not_found_for_seconds knob)."""
        if time.monotonic() < self.readable_from:
            raise SandboxError(404, "EXPORT_NOT_FOUND",
                               f"Export {self.id} not found in organization "
                               f"{self.organization.id}")

    def basis_fault(self, voucher_id: str) -> str | None:
        """What the voucher's basis PDF answers: None (the PDF) or a fault name."""
        if time.monotonic() < self.basis_readable_from:
            return "missing"
        return self.bad_basis.get(voucher_id)

    def to_wire(self) -> dict[str, Any]:
        """The export object [assumed beyond ``id``]."""
        org = self.organization
        return {
            "id": self.id,
            "organizationId": org.id,
            "externalOrganizationId": org.external_organization_id,
            "status": self.status,
            "createdAt": iso_z(self.created_at),
            "numberOfVouchers": len(self.vouchers),
            "numberOfReports": len(self.reports),
            "recipient": {
                "id": org.recipient_id,
                "name": org.recipient_name,
                "verificationListsType": self.verification_lists_type.value,
            },
        }

    def webhook_body(self) -> dict[str, Any]:
        """The "metadata" webhook payload [doc]."""
        org = self.organization
        return {
            "exportId": self.id,
            "numberOfVouchers": len(self.vouchers),
            "numberOfReports": len(self.reports),
            "organizationId": org.id,
            "externalOrganizationId": org.external_organization_id,
            "clientApplicationId": org.client_application_id,
        }

    def package(self, basis_url_for: Any) -> dict[str, Any]:
        return {
            "exportId": self.id,
            "verificationListsType": self.verification_lists_type.value,
            "vouchers": [v.to_wire(basis_url_for(v.id)) for v in self.vouchers],
        }

    def control_view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "organization_id": self.organization.id,
            "status": self.status,
            "verification_lists_type": self.verification_lists_type.value,
            "created_at": iso_z(self.created_at),
            "voucher_ids": [v.id for v in self.vouchers],
            "reports": [
                {"id": r.id, "owner_id": r.owner_id, "owner_name": r.owner_name,
                 "state": self.report_states[r.id]}
                for r in self.reports
            ],
            "voucher_results": dict(self.voucher_results),
            "reports_returned_to_ready": self.reports_returned_to_ready,
            "webhook": self.webhook.to_dict(),
            "content": None if self.content is None else {
                "filename": self.content.filename,
                "content_type": self.content.content_type,
                "size": len(self.content.data),
            },
            "status_update_count": len(self.status_updates),
            "not_found_for_seconds_left": round(max(0.0, self.readable_from - time.monotonic()), 1),
            "basis_not_found_for_seconds_left": round(
                max(0.0, self.basis_readable_from - time.monotonic()), 1),
            "bad_basis": dict(self.bad_basis),
        }


class SandboxState:
    def __init__(self, *, seed: int | None = None) -> None:
        self._lock = threading.Lock()
        self._organizations: dict[str, Organization] = {}
        self._by_client_id: dict[str, str] = {}
        self._tokens: dict[str, AccessToken] = {}
        self._refresh_tokens: dict[str, str] = {}  # refresh token -> organization id
        self._exports: dict[str, Export] = {}
        self._voucher_index: dict[str, str] = {}  # voucher id -> export id
        self._sequence = 0
        self.global_faults = Faults()
        self._random = random.Random(seed)

    # --- organizations ------------------------------------------------------------------------

    def create_organization(self, *, name: str, verification_lists_type: Format,
                            webhook_url: str | None, external_organization_id: str | None,
                            recipient_configured: bool = True, token_expires_in: int = 3600,
                            webhook_timeout_seconds: float = 10.0,
                            repeated_success_answer: str = "409") -> Organization:
        org = Organization(
            id=new_id(),
            name=name,
            external_organization_id=external_organization_id,
            client_id=f"sandbox-{secrets.token_hex(6)}",
            client_secret=secrets.token_urlsafe(24),
            verification_lists_type=verification_lists_type,
            webhook_url=webhook_url,
            client_application_id=str(secrets.randbelow(90_000_000) + 10_000_000),
            recipient_id=new_id()[:8],
            recipient_configured=recipient_configured,
            token_expires_in=token_expires_in,
            webhook_timeout_seconds=webhook_timeout_seconds,
            repeated_success_answer=repeated_success_answer,
        )
        with self._lock:
            self._organizations[org.id] = org
            self._by_client_id[org.client_id] = org.id
        return org

    def organization(self, org_id: str) -> Organization:
        org = self._organizations.get(org_id)
        if org is None:
            raise SandboxError(404, "ORGANIZATION_NOT_FOUND", f"Organization {org_id} not found")
        return org

    def update_organization(self, org_id: str, changes: dict[str, Any]) -> Organization:
        with self._lock:
            org = self.organization(org_id)
            for name, value in changes.items():
                if name == "verification_lists_type":
                    value = Format(value)
                setattr(org, name, value)
            return org

    def organization_id_for_client(self, client_id: str | None) -> str | None:
        return self._by_client_id.get(client_id or "")

    def record_request(self, org_id: str, method: str, path: str, status: int) -> None:
        with self._lock:
            org = self._organizations.get(org_id)
            if org is not None:
                org.requests.append({"method": method, "path": path, "status": status})

    # --- tokens -------------------------------------------------------------------------------

    def issue_token(self, client_id: str | None, client_secret: str | None) -> dict[str, Any]:
        with self._lock:
            org_id = self._by_client_id.get(client_id or "")
            org = self._organizations.get(org_id or "")
            # Constant-time comparison, as a real token endpoint would.
            if org is None or not secrets.compare_digest(
                (client_secret or "").encode(), org.client_secret.encode()
            ):
                raise OAuthError(401, "invalid_client", "Client authentication failed")
            return self._new_token(org)

    def refresh_token(self, refresh_token: str | None) -> dict[str, Any]:
        with self._lock:
            # A refresh token works once [doc]: pop it whether or not the org still exists.
            org_id = self._refresh_tokens.pop(refresh_token or "", None)
            org = self._organizations.get(org_id or "")
            if org is None:
                raise OAuthError(400, "invalid_grant", "Refresh token is invalid or already used")
            return self._new_token(org)

    def _new_token(self, org: Organization) -> dict[str, Any]:
        access, refresh = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        self._tokens[access] = AccessToken(org.id, time.monotonic() + org.token_expires_in)
        self._refresh_tokens[refresh] = org.id
        org.tokens_issued += 1
        return {"access_token": access, "token_type": "Bearer",
                "expires_in": org.token_expires_in, "refresh_token": refresh}

    def authenticate(self, token: str) -> str | None:
        """The organization a valid, unexpired access token belongs to."""
        with self._lock:
            entry = self._tokens.get(token)
            if entry is None:
                return None
            if time.monotonic() >= entry.expires_at:
                del self._tokens[token]
                return None
            return entry.organization_id

    def revoke_tokens(self, org_id: str) -> int:
        with self._lock:
            self.organization(org_id)
            doomed = [t for t, entry in self._tokens.items() if entry.organization_id == org_id]
            for token in doomed:
                del self._tokens[token]
            return len(doomed)

    # --- faults -------------------------------------------------------------------------------

    def set_faults(self, org_id: str | None, faults: Faults) -> None:
        with self._lock:
            if org_id is None:
                self.global_faults = faults
            else:
                self.organization(org_id).faults = faults

    def faults(self, org_id: str | None) -> Faults:
        return self.global_faults if org_id is None else self.organization(org_id).faults

    def decide_fault(self, org_id: str | None, method: str, path: str) -> FaultDecision:
        """Latency and the injected failure, if any, for one request (counts are consumed)."""
        with self._lock:
            org = self._organizations.get(org_id or "")
            layers = [f for f in (org.faults if org else None, self.global_faults) if f]
            decision = FaultDecision(sum(f.latency_ms for f in layers) / 1000)
            for faults in layers:
                rule = take_fail_rule(faults.fail_next, method, path)
                if rule is not None:
                    decision.error = _rule_error(rule)
                    return decision
            for faults in layers:
                if faults.updatestatus_down and path.endswith("/updatestatus"):
                    decision.error = SandboxError(
                        503, "SERVICE_UNAVAILABLE", "updatestatus is down (sandbox fault)")
                    return decision
                if rolls(self._random, faults.error_rate):
                    decision.error = SandboxError(
                        503, "SERVICE_UNAVAILABLE", "random failure (sandbox error_rate)")
                    return decision
            return decision

    # --- exports ------------------------------------------------------------------------------

    def create_export(self, org_id: str, reports: list[Report], *, webhook_copies: int,
                      send_webhook: bool, lose_webhook: bool, not_found_for_seconds: float = 0.0,
                      basis_not_found_for_seconds: float = 0.0,
                      bad_basis: dict[int, str] | None = None,
                      oversized_basis_bytes: int = 0,
                      voucher_ids: list[str] | None = None) -> Export:
        with self._lock:
            org = self.organization(org_id)
            if not org.recipient_configured:
                raise SandboxError(409, "RECIPIENT_NOT_FOUND",
                                   "the organization has no API report recipient to export to")
            self._sequence += 1
            webhook = WebhookLog(url=org.webhook_url, requested_copies=webhook_copies)
            if not send_webhook:
                webhook.skipped_reason, webhook.done = "send_webhook is false", True
            elif org.webhook_url is None:
                webhook.skipped_reason, webhook.done = "the organization has no webhook_url", True
            elif lose_webhook:
                # Lost on the way (e.g. a proxy that answered 200 and dropped it): Findity
                # believes it delivered, the reports stay in TRANSFER and only polling finds it.
                webhook.lost, webhook.done = True, True
            vouchers = build_vouchers(org.verification_lists_type, reports)
            if voucher_ids is not None:
                if len(voucher_ids) != len(vouchers):
                    raise SandboxError(400, "VALIDATION_ERROR",
                                       f"voucher_ids names {len(voucher_ids)} vouchers; this "
                                       f"export has {len(vouchers)}")
                for voucher, voucher_id in zip(vouchers, voucher_ids):
                    voucher.id = voucher_id
            bad = {}
            for index, fault in (bad_basis or {}).items():
                if index >= len(vouchers):
                    raise SandboxError(400, "VALIDATION_ERROR",
                                       f"bad_basis names voucher {index}; this export has "
                                       f"{len(vouchers)} (positions from 0)")
                bad[vouchers[index].id] = fault
            now = time.monotonic()
            export = Export(
                id=new_id(),
                organization=org,
                sequence=self._sequence,
                created_at=utc_now(),
                verification_lists_type=org.verification_lists_type,
                reports=list(reports),
                vouchers=vouchers,
                webhook=webhook,
                report_states={r.id: TRANSFER for r in reports},
                readable_from=now + not_found_for_seconds,
                basis_readable_from=now + basis_not_found_for_seconds,
                bad_basis=bad,
                oversized_basis_bytes=oversized_basis_bytes,
            )
            self._exports[export.id] = export
            for voucher in export.vouchers:
                self._voucher_index[voucher.id] = export.id
            return export

    def export(self, org_id: str, export_id: str) -> Export:
        export = self._exports.get(export_id)
        if export is None or export.organization.id != org_id:
            raise SandboxError(404, "EXPORT_NOT_FOUND",
                               f"Export {export_id} not found in organization {org_id}")
        return export

    def export_of_voucher(self, voucher_id: str) -> Export | None:
        export_id = self._voucher_index.get(voucher_id)
        return self._exports.get(export_id) if export_id else None

    def list_exports(self, org_id: str, status: str | None, offset: int,
                     limit: int) -> tuple[list[Export], int]:
        with self._lock:
            matching = sorted(
                (e for e in self._exports.values()
                 if e.organization.id == org_id and (status is None or e.status == status)),
                key=lambda e: e.sequence,
            )
            return matching[offset:offset + limit], len(matching)

    def store_content(self, org_id: str, export_id: str, content: StoredContent) -> None:
        with self._lock:
            self.export(org_id, export_id).content = content

    # --- webhook ------------------------------------------------------------------------------

    def record_webhook_delivery(self, org_id: str, export_id: str,
                                delivery: dict[str, Any]) -> None:
        with self._lock:
            self.export(org_id, export_id).webhook.deliveries.append(delivery)

    def finish_webhook(self, org_id: str, export_id: str) -> None:
        with self._lock:
            export = self.export(org_id, export_id)
            export.webhook.done = True
            if export.webhook.failed:
                export.reports_returned_to_ready = True
                self._recompute(export)

    # --- updatestatus -------------------------------------------------------------------------

    def apply_status_update(self, org_id: str, export_id: str, body: Any, raw: str) -> Export:
        """Validate and apply one updatestatus call; every call is recorded with its outcome."""
        with self._lock:
            export = self.export(org_id, export_id)
            record: dict[str, Any] = {"received_at": iso_z(utc_now()), "body": body, "raw": raw}
            export.status_updates.append(record)
            try:
                updates = _validate_updates(body, export)
            except SandboxError as exc:
                record.update(response_status=exc.status, error_code=exc.code,
                              error_message=exc.message)
                raise
            for update in updates:
                result = {key: value for key, value in update.items() if key != "id"}
                export.voucher_results[update["id"]] = result
            self._recompute(export)
            record["response_status"] = 200
            return export

    def _recompute(self, export: Export) -> None:
        """Export status and report states from the latest result per voucher.

        All vouchers SUCCESS -> PROCESSED; any FAILED -> FAILED (its reports back to "Ready to
        send"); otherwise still UNPROCESSED. A report is SENT once every voucher holding it
        succeeded.
        """
        results = {v.id: export.voucher_results.get(v.id, {}).get("status")
                   for v in export.vouchers}
        if any(s == FAILED for s in results.values()):
            export.status = FAILED
        elif all(s == SUCCESS for s in results.values()):
            export.status = PROCESSED
        else:
            export.status = UNPROCESSED
        for report in export.reports:
            statuses = [results[v.id] for v in export.vouchers if report.id in v.report_ids]
            if any(s == FAILED for s in statuses):
                export.report_states[report.id] = READY_TO_SEND
            elif statuses and all(s == SUCCESS for s in statuses):
                export.report_states[report.id] = SENT
            elif export.reports_returned_to_ready:
                export.report_states[report.id] = READY_TO_SEND
            else:
                export.report_states[report.id] = TRANSFER


def _validate_updates(body: Any, export: Export) -> list[dict[str, Any]]:
    """Check an updatestatus body against the documented shapes; explain the first problem."""
    def bad(message: str) -> SandboxError:
        return SandboxError(400, "VALIDATION_ERROR", message)

    if not isinstance(body, dict):
        raise bad('the body must be a JSON object {"voucherUpdates": [...]}')
    unknown = set(body) - {"voucherUpdates"}
    if unknown:
        raise bad(f"unknown field(s) {sorted(unknown)}; the body is {{\"voucherUpdates\": [...]}}")
    updates = body.get("voucherUpdates")
    if not isinstance(updates, list) or not updates:
        raise bad("voucherUpdates must be a non-empty list")
    seen: set[str] = set()
    for index, update in enumerate(updates):
        where = f"voucherUpdates[{index}]"
        if not isinstance(update, dict):
            raise bad(f"{where} must be an object")
        voucher_id = update.get("id")
        if not isinstance(voucher_id, str) or not voucher_id:
            raise bad(f"{where}.id must be a non-empty string")
        if export.voucher(voucher_id) is None:
            raise bad(f"{where}.id: voucher {voucher_id} is not part of export {export.id}")
        if voucher_id in seen:
            raise bad(f"{where}.id: voucher {voucher_id} appears twice in one request")
        seen.add(voucher_id)
        status = update.get("status")
        if status == SUCCESS:
            _validate_success(update, where)
        elif status == FAILED:
            _validate_failed(update, where)
        else:
            raise bad(f"{where}.status must be SUCCESS or FAILED, not {status!r}")
        previous = export.voucher_results.get(voucher_id)
        if (previous and previous.get("status") == SUCCESS
                and previous.get("voucherNumber") is not None):
            answer = export.organization.repeated_success_answer
            same = status == SUCCESS and update.get("voucherNumber") == previous["voucherNumber"]
            if same and answer == "200":
                continue
            if same and answer == "400":
                raise SandboxError(
                    400, "VALIDATION_ERROR",
                    f"{where}: voucher {voucher_id} has already been processed")
            raise SandboxError(
                409, "VOUCHER_ALREADY_PROCESSED",
                f"voucher {voucher_id} was already reported SUCCESS with voucher number "
                f"{previous['voucherNumber']} and cannot be reported again",
            )
    return updates


def _validate_success(update: dict[str, Any], where: str) -> None:
    unknown = set(update) - _SUCCESS_KEYS
    if unknown:
        raise SandboxError(400, "VALIDATION_ERROR",
                           f"{where}: unknown field(s) {sorted(unknown)} for status SUCCESS")
    booking_date = update.get("bookingDate")
    if booking_date is not None:
        try:
            parsed = datetime.fromisoformat(booking_date) if isinstance(booking_date, str) else None
        except ValueError:
            parsed = None
        if parsed is None or parsed.tzinfo is None:
            raise SandboxError(400, "VALIDATION_ERROR",
                               f"{where}.bookingDate must be an ISO 8601 date-time with a time "
                               f"zone, e.g. 2024-11-21T08:29:00Z; got {booking_date!r}")
    number = update.get("voucherNumber")
    if number is not None and (isinstance(number, bool) or not isinstance(number, int)):
        raise SandboxError(400, "VALIDATION_ERROR",
                           f"{where}.voucherNumber must be an integer; got {number!r}")
    text = update.get("informationText")
    if text is not None and not isinstance(text, str):
        raise SandboxError(400, "VALIDATION_ERROR", f"{where}.informationText must be a string")


def _validate_failed(update: dict[str, Any], where: str) -> None:
    unknown = set(update) - _FAILED_KEYS
    if unknown:
        raise SandboxError(400, "VALIDATION_ERROR",
                           f"{where}: unknown field(s) {sorted(unknown)} for status FAILED")
    text = update.get("errorText")
    if not isinstance(text, str) or not text.strip():
        raise SandboxError(400, "VALIDATION_ERROR",
                           f"{where}.errorText must say what went wrong "
                           "(the administrator reads it)")
