"""Provider kind -> adapter, and the email helpers services reach through `ChannelAdapters`
(domain/delivery.py). Only bootstrap.py imports this module; adding a provider is one module,
one test module and one entry in `_EMAIL_KINDS`.

Stored provider settings (`providers.config` / sealed `providers.secrets`) per kind:
  smtp      config: host, port, security (none|starttls|implicit), username, pool_size, timeout,
                    max_messages_per_connection, local_hostname      secrets: password
  ses       config: region, configuration_set, endpoint_url, topic_arns
            secrets: access_key_id, secret_access_key
  sendgrid  config: base_url                                         secrets: api_key, webhook_key
  mailgun   config: domain, base_url                                 secrets: api_key, webhook_key
`webhook_key` (and `previous_webhook_key` during a rotation) verifies the provider's callbacks.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from herald.channels.email import bounces, dkim, dnsauth
from herald.channels.email.mailgun import MailgunEventParser, MailgunProvider
from herald.channels.email.sendgrid import SendGridEventParser, SendGridProvider
from herald.channels.email.ses import CertificateUnavailable, SesEventParser, SesProvider, SubscriptionNotConfirmed
from herald.channels.email.smtp import SmtpProvider, SmtpRelay
from herald.domain.delivery import (
    CallbackParser,
    CallbackRequest,
    CallbackUnavailable,
    Channel,
    DeliveryEvent,
    DnsRecord,
    MechanismCheck,
    Provider,
    ProviderConfigError,
)

Secrets = Mapping[str, str]
Config = Mapping[str, Any]


def _smtp(config: Config, secrets: Secrets) -> Provider:
    known = {"host", "port", "security", "username", "pool_size", "timeout", "max_messages_per_connection",
             "local_hostname", "max_idle_seconds"}
    _only(config, known, "smtp")
    relay = SmtpRelay(password=secrets.get("password"), **{k: v for k, v in config.items()})
    return SmtpProvider(relay, sign_executor=_signing_threads())  # the message carries its DKIM key


@functools.cache
def _signing_threads() -> ThreadPoolExecutor:
    """DKIM RSA signing off the event loop: `cryptography` releases the GIL while it signs, so one
    process signs on every core."""
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="dkim")


def _ses(config: Config, secrets: Secrets) -> Provider:
    _only(config, {"region", "configuration_set", "endpoint_url", "topic_arns"}, "ses")
    return SesProvider(region=_need(config, "region", "ses"), access_key_id=_need(secrets, "access_key_id", "ses"),
                       secret_access_key=_need(secrets, "secret_access_key", "ses"),
                       configuration_set=config.get("configuration_set"), endpoint_url=config.get("endpoint_url"))


def _sendgrid(config: Config, secrets: Secrets) -> Provider:
    _only(config, {"base_url"}, "sendgrid")
    return SendGridProvider(_need(secrets, "api_key", "sendgrid"),
                            **({"base_url": config["base_url"]} if "base_url" in config else {}))


def _mailgun(config: Config, secrets: Secrets) -> Provider:
    _only(config, {"domain", "base_url"}, "mailgun")
    return MailgunProvider(_need(secrets, "api_key", "mailgun"), _need(config, "domain", "mailgun"),
                           **({"base_url": config["base_url"]} if "base_url" in config else {}))


class _SesCallbacks:
    """SES events arrive through SNS: a SubscriptionConfirmation is verified and confirmed here
    (SNS then starts delivering), notifications become events."""

    key = "ses"

    def __init__(self, parser: SesEventParser) -> None:
        self.parser = parser

    async def parse_callback(self, request: CallbackRequest, secrets: Sequence[str],
                             now: datetime) -> list[DeliveryEvent]:
        try:
            if SesEventParser.is_subscription_confirmation(request):
                await self.parser.confirm_subscription(request, now)
                return []
            return await self.parser.parse_callback(request, secrets, now)
        except (CertificateUnavailable, SubscriptionNotConfirmed) as exc:
            raise CallbackUnavailable(str(exc)) from exc


def _ses_events(config: Config, _secrets: Secrets) -> CallbackParser:
    return _SesCallbacks(SesEventParser(region=config.get("region"), topic_arns=config.get("topic_arns")))


MakeProvider = Callable[[Config, Secrets], Provider]
MakeParser = Callable[[Config, Secrets], CallbackParser]
_EMAIL_KINDS: dict[str, tuple[MakeProvider, MakeParser | None]] = {
    "smtp": (_smtp, None),
    "ses": (_ses, _ses_events),
    "sendgrid": (_sendgrid, lambda _c, _s: SendGridEventParser()),
    "mailgun": (_mailgun, lambda _c, _s: MailgunEventParser()),
}


def _only(config: Config, known: set[str], kind: str) -> None:
    unknown = set(config) - known
    if unknown:
        raise ProviderConfigError(f"{kind}: unknown settings {', '.join(sorted(unknown))}; "
                                  f"known: {', '.join(sorted(known))}")


def _need(values: Mapping[str, Any], name: str, kind: str) -> Any:
    value = values.get(name)
    if value in (None, ""):
        raise ProviderConfigError(f"{kind}: {name} is required")
    return value


class Adapters:
    """The `ChannelAdapters` implementation. `nameservers` ("host" or "host:port"): the DNS servers
    sending-domain checks ask; none means the system resolver."""

    def __init__(self, nameservers: Sequence[str] = ()) -> None:
        self.nameservers = [n.rpartition(":")[0] if ":" in n else n for n in nameservers]
        ports = {int(n.rpartition(":")[2]) for n in nameservers if ":" in n}
        if len(ports) > 1:
            raise ProviderConfigError("all DNS nameservers must use the same port")
        self.dns_port = ports.pop() if ports else 53

    def provider_kinds(self, channel: Channel) -> Sequence[str]:
        return tuple(_EMAIL_KINDS) if channel == "email" else ()

    def make_provider(self, kind: str, config: Config, secrets: Secrets) -> Provider:
        if kind not in _EMAIL_KINDS:
            raise ProviderConfigError(f"no provider kind {kind!r}; known: {', '.join(_EMAIL_KINDS)}")
        return _EMAIL_KINDS[kind][0](config, secrets)

    def callback_parser(self, kind: str, config: Config, secrets: Secrets) -> CallbackParser:
        make = _EMAIL_KINDS.get(kind, (None, None))[1]
        if make is None:
            raise ProviderConfigError(f"{kind} providers send no status callbacks (bounces arrive by SMTP: "
                                      "herald inbound-smtp)")
        return make(config, secrets)

    def generate_dkim_key(self, algorithm: str) -> tuple[bytes, str]:
        if algorithm not in ("rsa-2048", "ed25519"):
            raise ProviderConfigError(f"DKIM algorithm must be rsa-2048 or ed25519, not {algorithm!r}")
        return dkim.generate_key(algorithm)  # type: ignore[arg-type]

    def dns_records(self, domain: str, selector: str, dkim_txt: str, spf_include: str | None,
                    dmarc_rua: str | None) -> list[DnsRecord]:
        return dnsauth.records_to_publish(domain, selector, dkim_txt, spf_include, dmarc_rua)

    async def check_domain(self, domain: str, selector: str, dkim_txt: str,
                           spf_include: str | None) -> Mapping[str, MechanismCheck]:
        resolver = dnsauth.make_resolver(self.nameservers or None, self.dns_port)
        return await dnsauth.check_domain(domain, selector, dkim_txt, spf_include, resolver)

    def parse_report(self, raw: bytes) -> list[DeliveryEvent]:
        return bounces.parse_report(raw)


def adapters(nameservers: Sequence[str] = ()) -> Adapters:
    return Adapters(nameservers)
