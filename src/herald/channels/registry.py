"""Provider kind -> adapter, and the email helpers services reach through `ChannelAdapters`
(domain/delivery.py). Only bootstrap.py imports this module; adding a provider is one module,
one test module and one entry in `_KINDS`.

Stored provider settings (`providers.config` / sealed `providers.secrets`) per kind:
  smtp      config: host, port, security (none|starttls|implicit), username, pool_size, timeout,
                    max_messages_per_connection, local_hostname      secrets: password
  ses       config: region, configuration_set, endpoint_url, topic_arns
            secrets: access_key_id, secret_access_key
  sendgrid  config: base_url                                         secrets: api_key, webhook_key
  mailgun   config: domain, base_url                                 secrets: api_key, webhook_key
`webhook_key` (and `previous_webhook_key` during a rotation) verifies the provider's callbacks.
The other channels' kinds document their settings in their own modules: twilio, http_gateway and smpp
(channels/sms/), whatsapp_cloud (channels/whatsapp/cloud.py), webpush, fcm and apns
(channels/push/). "sandbox" stands in for every provider of a workspace in sandbox mode.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, Final

from herald.channels.config import need, only_known
from herald.channels.email import bounces, dkim, dnsauth
from herald.channels.email.mailgun import MailgunEventParser, MailgunProvider
from herald.channels.email.sendgrid import SendGridEventParser, SendGridProvider
from herald.channels.email.ses import CertificateUnavailable, SesEventParser, SesProvider, SubscriptionNotConfirmed
from herald.channels.email.smtp import SmtpProvider, SmtpRelay
from herald.channels.push import apns, fcm, webpush
from herald.channels.sandbox import SandboxProvider
from herald.channels.sms import http_gateway, smpp, twilio
from herald.channels.whatsapp import cloud as whatsapp_cloud
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
    ProviderRequestError,
    ProviderTemplate,
    UnsupportedFeature,
)

Secrets = Mapping[str, str]
Config = Mapping[str, Any]


def _smtp(config: Config, secrets: Secrets) -> Provider:
    known = {"host", "port", "security", "username", "pool_size", "timeout", "max_messages_per_connection",
             "local_hostname", "max_idle_seconds"}
    only_known(config, known, "smtp")
    relay = SmtpRelay(password=secrets.get("password"), **{k: v for k, v in config.items()})
    return SmtpProvider(relay, sign_executor=_signing_threads())  # the message carries its DKIM key


@functools.cache
def _signing_threads() -> ThreadPoolExecutor:
    """DKIM RSA signing off the event loop: `cryptography` releases the GIL while it signs, so one
    process signs on every core."""
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="dkim")


def _ses(config: Config, secrets: Secrets) -> Provider:
    only_known(config, {"region", "configuration_set", "endpoint_url", "topic_arns"}, "ses")
    return SesProvider(region=need(config, "region", "ses"), access_key_id=need(secrets, "access_key_id", "ses"),
                       secret_access_key=need(secrets, "secret_access_key", "ses"),
                       configuration_set=config.get("configuration_set"), endpoint_url=config.get("endpoint_url"))


def _sendgrid(config: Config, secrets: Secrets) -> Provider:
    only_known(config, {"base_url"}, "sendgrid")
    return SendGridProvider(need(secrets, "api_key", "sendgrid"),
                            **({"base_url": config["base_url"]} if "base_url" in config else {}))


def _mailgun(config: Config, secrets: Secrets) -> Provider:
    only_known(config, {"domain", "base_url"}, "mailgun")
    return MailgunProvider(need(secrets, "api_key", "mailgun"), need(config, "domain", "mailgun"),
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


def _sandbox(config: Config, _secrets: Secrets) -> Provider:
    channel = config.get("channel")
    if channel not in ("email", "sms", "whatsapp", "push", "inbox"):
        raise ProviderConfigError(f"sandbox: unknown channel {channel!r}")
    return SandboxProvider(channel)


MakeProvider = Callable[[Config, Secrets], Provider]
MakeParser = Callable[[Config, Secrets], CallbackParser]
# kind -> (channel, provider factory, callback parser factory or None)
_KINDS: dict[str, tuple[Channel, MakeProvider, MakeParser | None]] = {
    "smtp": ("email", _smtp, None),
    "ses": ("email", _ses, _ses_events),
    "sendgrid": ("email", _sendgrid, lambda _c, _s: SendGridEventParser()),
    "mailgun": ("email", _mailgun, lambda _c, _s: MailgunEventParser()),
    "twilio": ("sms", twilio.make_provider, twilio.make_parser),
    "http_gateway": ("sms", http_gateway.make_provider, http_gateway.make_parser),
    "smpp": ("sms", smpp.make_provider, None),  # receipts and incoming SMS come over the bind: provider.events()
    "whatsapp_cloud": ("whatsapp", whatsapp_cloud.make_provider, whatsapp_cloud.make_parser),
    # push kinds are named like push_subscriptions.kind: a subscription goes to a provider of its kind
    "webpush": ("push", webpush.make_provider, None),
    "fcm": ("push", fcm.make_provider, None),
    "apns": ("push", apns.make_provider, None),
}
# Stands in for every channel's providers in sandbox mode (services/sandbox.py); never stored.
_SANDBOX: Final = "sandbox"


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
        return tuple(kind for kind, (of, _make, _parser) in _KINDS.items() if of == channel)

    def make_provider(self, kind: str, config: Config, secrets: Secrets) -> Provider:
        if kind == _SANDBOX:
            return _sandbox(config, secrets)
        if kind not in _KINDS:
            raise ProviderConfigError(f"no provider kind {kind!r}; known: {', '.join(_KINDS)}")
        return _KINDS[kind][1](config, secrets)

    def callback_parser(self, kind: str, config: Config, secrets: Secrets) -> CallbackParser:
        make = _KINDS[kind][2] if kind in _KINDS else None
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

    async def list_templates(self, provider: Provider) -> list[ProviderTemplate]:
        catalog = _template_catalog(provider)
        try:
            found = await catalog.list_templates()
        except whatsapp_cloud.GraphApiError as exc:
            raise ProviderRequestError(exc.detail, exc.reason) from exc
        return [_provider_template(t.name, t.language, t.category, t.status, t.id, t.rejected_reason) for t in found]

    async def submit_template(self, provider: Provider, name: str, language: str, category: str,
                              components: Sequence[Mapping[str, Any]]) -> ProviderTemplate:
        catalog = _template_catalog(provider)
        try:
            t = await catalog.submit_template(name, language, category, components)
        except whatsapp_cloud.GraphApiError as exc:
            raise ProviderRequestError(exc.detail, exc.reason) from exc
        return _provider_template(t.name, t.language, t.category, t.status, t.id, t.rejected_reason)

    async def template_updates(self, parser: CallbackParser, request: CallbackRequest, secrets: Sequence[str],
                               now: datetime) -> list[ProviderTemplate]:
        if not isinstance(parser, whatsapp_cloud.WhatsAppCloudParser):
            return []
        updates = await parser.parse_template_updates(request, secrets, now)
        return [_provider_template(u.name, u.language, u.category, u.approval_status, u.template_id, u.reason)
                for u in updates]


def _template_catalog(provider: Provider) -> whatsapp_cloud.WhatsAppCloudProvider:
    """The providers that keep message templates at their provider: WhatsApp Cloud API accounts."""
    if not isinstance(provider, whatsapp_cloud.WhatsAppCloudProvider):
        raise UnsupportedFeature(f"{provider.key} providers have no message templates to submit or list")
    return provider


def _provider_template(name: str, language: str, category: str | None, status: str | None, template_id: str | None,
                       rejected_reason: str | None) -> ProviderTemplate:
    return ProviderTemplate(name=name, language=language, category=category, status=status, id=template_id,
                            rejected_reason=rejected_reason)


def adapters(nameservers: Sequence[str] = ()) -> Adapters:
    return Adapters(nameservers)
