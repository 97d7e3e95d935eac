"""Standard Webhooks signatures (https://www.standardwebhooks.com): `webhook-id`,
`webhook-timestamp` and `webhook-signature`, one `v1,<base64 HMAC-SHA256>` per secret so a
receiver verifies with either secret while they are rotated."""

from __future__ import annotations

import binascii
from collections.abc import Sequence
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook

SECRET_PREFIX = "whsec_"


def check_secret(secret: str) -> str | None:
    """Why `secret` is not a usable `whsec_…` secret (None when it is)."""
    if not secret.startswith(SECRET_PREFIX):
        return "must start with whsec_"
    try:
        Webhook(secret)
    except (binascii.Error, ValueError, RuntimeError, Exception) as exc:  # the library raises several types
        return f"is not base64 after whsec_ ({exc.__class__.__name__})"
    return None


class Signer:
    def __init__(self, secrets: Sequence[str]) -> None:
        self._signers = [Webhook(secret) for secret in secrets]

    @property
    def enabled(self) -> bool:
        return bool(self._signers)

    def headers(self, message_id: str, body: bytes, now: float) -> dict[str, str]:
        """Headers for one attempt; the id stays the same across retries, the timestamp does not."""
        timestamp = datetime.fromtimestamp(int(now), UTC)
        headers = {"webhook-id": message_id, "webhook-timestamp": str(int(now))}
        if self._signers:
            text = body.decode()
            headers["webhook-signature"] = " ".join(s.sign(message_id, timestamp, text) for s in self._signers)
        return headers
