"""Schemathesis hooks for `just openapi-check`: sign every request as the service verifies it.

Loaded through `SCHEMATHESIS_HOOKS=openapi_check_hooks` with `scripts/` on `PYTHONPATH`.

Signing (docs/contract.md §4) covers the request target exactly as it goes on the wire, so it is
done by a `requests` auth object, which runs after `requests` has encoded the path and query:
signing Schemathesis' unencoded case instead would make every request with an escaped
character a false 401. Requests alternate between hmac-v1 and hmac-v2 so that both schemes
are exercised.

Each operation is signed as a caller its route group is open to (`api/src/auth/policy.rs`,
docs/contract.md §4.5); `CALLERS` is that table, kept to one caller per operation.

Environment: `OPENAPI_CHECK_SECRET` (the service's `INTERNAL_SERVICE_SECRET`), and
`OPENAPI_CHECK_SCHEME` = `v1`, `v2` or `both` (default).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import os
import secrets
import threading
import time

import requests
import schemathesis

SECRET = os.environ["OPENAPI_CHECK_SECRET"].encode()
SCHEME = os.environ.get("OPENAPI_CHECK_SCHEME", "both")

# Path template -> the caller that signs requests to it (each path has one operation; the
# other methods Schemathesis sends to check for 405 are signed the same way).
CALLERS = {
    "/api/v1/orders": "api-gateway",
    "/api/v1/orders/{id}/reserve": "api-gateway",
    "/api/v1/orders/{id}/cancel": "api-gateway",
    "/api/v1/orders/{id}/confirm": "payment-service",
    "/api/v1/orders/{id}/refunds": "payment-service",
    "/api/v1/orders/{id}/tickets": "ticket-service",
    "/api/v1/orders/{id}/events": "api-gateway",
    "/internal/events": "event-service",
    "/internal/orders/{id}": "payment-service",
    "/internal/orders/{id}/for-payment": "payment-service",
    "/internal/orders/without-tickets": "payment-service",
    "/internal/orders/{id}/items": "ticket-service",
    "/internal/jobs": "api-gateway",
}


V1_HEADERS = ("x-service-name", "x-request-timestamp", "x-request-nonce", "x-internal-auth")
V2_HEADERS = ("x-internal-service", "x-internal-timestamp", "x-internal-signature")


def _hex(text: str) -> str:
    return hmac.new(SECRET, text.encode(), hashlib.sha256).hexdigest()


class _Clock:
    """Milliseconds since the epoch, strictly increasing across calls.

    An hmac-v2 signature is its own replay key, so two requests to one URL within the same
    millisecond would sign identically and the second would be refused as a replay.
    """

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def now_ms(self) -> int:
        with self._lock:
            self._last = max(int(time.time() * 1000), self._last + 1)
            return self._last


CLOCK = _Clock()
TURN = itertools.count()


class Signed(requests.auth.AuthBase):
    """Adds the headers of one scheme, signed over the prepared request's method and target."""

    def __init__(self, service: str) -> None:
        self.service = service

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        # The document declares the headers of both schemes as API keys, so Schemathesis fills
        # them with generated values; a request carries exactly one scheme's, the real ones.
        for name in V1_HEADERS + V2_HEADERS:
            r.headers.pop(name, None)
        url = r.path_url
        ts = str(CLOCK.now_ms())
        scheme = SCHEME if SCHEME in ("v1", "v2") else ("v1", "v2")[next(TURN) % 2]
        if scheme == "v1":
            nonce = secrets.token_hex(16)
            r.headers["x-service-name"] = self.service
            r.headers["x-request-timestamp"] = ts
            r.headers["x-request-nonce"] = nonce
            r.headers["x-internal-auth"] = _hex(
                f"{self.service}:{ts}:{nonce}:{r.method.upper()}:{url}"
            )
        else:
            r.headers["x-internal-service"] = self.service
            r.headers["x-internal-timestamp"] = ts
            r.headers["x-internal-signature"] = _hex(f"{self.service}:{ts}:{url}")
        return r


@schemathesis.hook
def before_call(context, case, kwargs):
    path = case.operation.path
    if not (path.startswith("/api/") or path.startswith("/internal/")):
        return
    service = CALLERS.get(path)
    if service is None:
        raise RuntimeError(f"no caller for {path}: add it to CALLERS in {__file__}")
    kwargs["auth"] = Signed(service)
