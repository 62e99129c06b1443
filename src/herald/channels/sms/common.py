"""Our message id in a per-message status callback URL (the query parameter `m`), shared by the
HTTP SMS providers (twilio.py, http_gateway.py): added when sending, read back from the callback."""

from __future__ import annotations

from typing import Final
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

MESSAGE_ID_PARAM: Final = "m"


def with_message_id(url: str, message_id: str) -> str:
    """`url` with our id added as the query parameter `m`."""
    parts = urlsplit(url)
    query = f"{parts.query}&" if parts.query else ""
    return urlunsplit(parts._replace(query=query + urlencode({MESSAGE_ID_PARAM: message_id})))


def message_id_in(url: str) -> str | None:
    values = parse_qs(urlsplit(url).query).get(MESSAGE_ID_PARAM)
    return (values[0].strip() or None) if values else None
