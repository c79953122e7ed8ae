"""Pre-signed "S3" links of the Brex sandbox: receipt downloads (15 minutes [spec: Receipt])
and receipt uploads (30 minutes, PUT only, 50 MB [spec: receipt_upload, receipt_match]).

The links look and fail like S3's query-string-authenticated URLs: ``X-Amz-Date`` plus
``X-Amz-Expires`` (whole seconds) bound the link; after that S3 answers 403 ``AccessDenied``
"Request has expired"; a changed link answers 403 ``SignatureDoesNotMatch``; a request that also
carries an ``Authorization`` header answers 400 ``InvalidArgument`` (S3 takes one auth mechanism:
a client that sends its Brex token to the link is refused, and would have leaked it to AWS).
Errors are S3's XML bodies. The links are served by the sandbox itself under ``/_s3/``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode
from xml.sax.saxutils import escape

AMZ_DATE = "%Y%m%dT%H%M%SZ"


class S3Error(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra

    def xml(self) -> str:
        parts = [f"<Code>{self.code}</Code>", f"<Message>{escape(self.message)}</Message>"]
        parts += [f"<{k}>{escape(v)}</{k}>" for k, v in self.extra.items()]
        parts.append(f"<RequestId>{secrets.token_hex(8).upper()}</RequestId>")
        return '<?xml version="1.0" encoding="UTF-8"?>\n<Error>' + "".join(parts) + "</Error>"


class Presigner:
    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or secrets.token_bytes(32)

    def _signature(self, method: str, path: str, amz_date: str, expires: str) -> str:
        message = "\n".join([method.upper(), path, amz_date, expires]).encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def query(self, method: str, path: str, *, issued: datetime, expires_seconds: int) -> str:
        amz_date = issued.astimezone(UTC).strftime(AMZ_DATE)
        expires = str(expires_seconds)
        return urlencode({
            "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
            "X-Amz-Credential": f"ASIASANDBOX/{amz_date[:8]}/us-east-1/s3/aws4_request",
            "X-Amz-Date": amz_date,
            "X-Amz-Expires": expires,
            "X-Amz-SignedHeaders": "host",
            "X-Amz-Signature": self._signature(method, path, amz_date, expires),
        })

    def verify(self, method: str, path: str, params: dict[str, str],
               authorization: str | None, now: datetime) -> None:
        """Raise ``S3Error`` unless the link is intact and current."""
        if authorization:
            raise S3Error(400, "InvalidArgument",
                          "Only one auth mechanism allowed; only the X-Amz-Algorithm query "
                          "parameter, Signature query string parameter or the Authorization "
                          "header should be specified",
                          ArgumentName="Authorization", ArgumentValue="<redacted>")
        amz_date, expires = params.get("X-Amz-Date"), params.get("X-Amz-Expires")
        signature = params.get("X-Amz-Signature")
        if not (amz_date and expires and signature and params.get("X-Amz-Algorithm")):
            raise S3Error(403, "AccessDenied", "Access Denied")
        expected = self._signature(method, path, amz_date, expires)
        if not hmac.compare_digest(expected, signature):
            raise S3Error(403, "SignatureDoesNotMatch",
                          "The request signature we calculated does not match the signature "
                          "you provided. Check your key and signing method.")
        issued = datetime.strptime(amz_date, AMZ_DATE).replace(tzinfo=UTC)
        deadline = issued + timedelta(seconds=int(expires))
        if now > deadline:
            raise S3Error(403, "AccessDenied", "Request has expired", **{
                "X-Amz-Expires": expires,
                "Expires": deadline.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "ServerTime": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            })
