"""The SMS tests' peers on 127.0.0.1: the shared provider test server (tests/channels/httpserver.py)
and a Twilio-speaking answer for it (Basic auth, the
form-encoded Create Message request, 201 + the Message resource, Twilio's error JSON and its
documented test-number behaviour), and Twilio's webhook signature computed here independently of
the adapter (checked against the official test vectors in test_twilio.py).

Bounded: the server runs on a daemon thread and is shut down when the block ends."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field

from tests.channels.httpserver import Answer as Answer  # re-exported for the SMS tests
from tests.channels.httpserver import Seen, json_reply
from tests.channels.httpserver import serve as serve
from tests.stores.localserver import Reply

# ---- Twilio -------------------------------------------------------------------------------------------

def twilio_signature(token: str, url: str, params: Mapping[str, list[str]]) -> str:
    """Twilio's documented algorithm, written independently of the adapter: the URL, then for each
    parameter name in sorted order each of its values (sorted) as name+value; HMAC-SHA1 with the
    Auth Token; base64."""
    data = url
    for name in sorted(params):
        for value in sorted(params[name]):
            data += name + value
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()


# Twilio's test credentials' magic "To" numbers (twilio.com/docs/iam/test-credentials) and what the
# API answers for them.
MAGIC_TO: dict[str, tuple[int, str]] = {
    "+15005550001": (21211, "The 'To' number +15005550001 is not a valid phone number."),
    "+15005550002": (21612, "The 'To' phone number: +15005550002, is not currently reachable using the 'From' "
                            "phone number: +15005550006 via SMS."),
    "+15005550003": (21408, "Permission to send an SMS has not been enabled for the region indicated by the "
                            "'To' number: +15005550003."),
    "+15005550004": (21610, "Attempt to send to unsubscribed recipient"),
    "+15005550009": (21614, "'To' number is not a valid mobile number"),
}


@dataclass
class FakeTwilio:
    """Answers Create Message like Twilio: checks the path and Basic credentials, the required
    fields, then answers 201 with the Message resource (or the documented error JSON)."""

    account_sid: str
    credentials: tuple[str, str]           # (user, password) it accepts
    created: list[dict[str, str]] = field(default_factory=list)

    def __call__(self, request: Seen) -> Reply:
        if request.method != "POST" or request.path != f"/2010-04-01/Accounts/{self.account_sid}/Messages.json":
            return self.error(404, 20404, "The requested resource was not found")
        if request.headers.get("authorization") != self.basic():
            return self.error(401, 20003, "Authenticate")
        if "application/x-www-form-urlencoded" not in request.headers.get("content-type", ""):
            return self.error(400, 21000, "form-encoded body expected")
        form = {name: values[0] for name, values in request.form().items()}
        if "To" not in form:
            return self.error(400, 21604, "A 'To' phone number is required.")
        if "From" not in form and "MessagingServiceSid" not in form:
            return self.error(400, 21603, "A 'From' phone number is required.")
        if form["To"] in MAGIC_TO:
            code, message = MAGIC_TO[form["To"]]
            return self.error(400, code, message)
        sid = f"SM{len(self.created) + 1:032x}"
        self.created.append(form | {"sid": sid})
        return json_reply(201, {"sid": sid, "account_sid": self.account_sid, "to": form["To"],
                                "from": form.get("From"), "messaging_service_sid": form.get("MessagingServiceSid"),
                                "body": form.get("Body"), "status": "queued" if "From" in form else "accepted",
                                "num_segments": "1", "direction": "outbound-api", "api_version": "2010-04-01",
                                "error_code": None, "error_message": None,
                                "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json"})

    def basic(self) -> str:
        return "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()

    @staticmethod
    def error(status: int, code: int, message: str, headers: dict[str, str] | None = None) -> Reply:
        return json_reply(status, {"code": code, "message": message,
                                   "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status},
                          headers)
