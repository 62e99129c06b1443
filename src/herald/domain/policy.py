"""The send-time policy (C7, G8): may this message go to this recipient, now?

Pure rules, no IO. `decide` runs the checks below for one recipient over a `PolicyContext` that
pipeline/policy.py preloads per batch (consent, suppressions, recent sends, contacts, domains,
balance); the first check that does not allow the send wins:

    suppression · consent for the purpose · channel rules (WhatsApp 24 h window and templates)
    · sending domain verified · frequency caps · quiet hours (a deferral, not a refusal)
    · balance

A refusal carries a reason code (REFUSALS) that is stored on the message (status 'suppressed',
status_reason = code) and counted in reports. Quiet hours defer: the message stays queued until
the next allowed minute in the recipient's local time. Deferral comes after every refusal, so a
message is never held overnight only to be refused in the morning, and the balance check comes
last because an allowed send reserves its cost in the context (`PolicyContext.note_sent`), like
it counts towards the frequency caps of the recipient's later messages in the same batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Any, Final, Literal

from herald.domain.localtime import Window, next_allowed, zones_for

CHANNELS: Final = ("email", "sms", "whatsapp", "push", "inbox")
PURPOSES: Final = ("marketing", "transactional")
WHATSAPP_WINDOW: Final = timedelta(hours=24)
# TCPA/CTIA practice: marketing SMS to US numbers only 08:00-21:00 in the recipient's local time,
# whatever the workspace configured.
US_SMS_WINDOW: Final = Window(time(8, 0), time(21, 0))

# Every refusal/deferral code the policy stores on a message, with what it means.
REFUSALS: Final[Mapping[str, str]] = {
    "suppressed:unsubscribed": "the address unsubscribed",
    "suppressed:hard_bounce": "the address hard-bounced",
    "suppressed:complaint": "the recipient complained (spam report)",
    "suppressed:invalid": "the address is invalid",
    "suppressed:erased": "the contact was erased (GDPR/CCPA)",
    "suppressed:manual": "the address was suppressed by hand or by import",
    "consent:missing": "no consent was recorded for this channel and purpose",
    "consent:withdrawn": "the contact withdrew consent for this channel and purpose",
    "consent:pending": "double opt-in not confirmed yet",
    "whatsapp:window_closed": "free-form WhatsApp outside 24 h of the contact's last message",
    "whatsapp:template_not_approved": "the WhatsApp template is not approved",
    "whatsapp:marketing_to_us": "WhatsApp marketing templates cannot be sent to +1 numbers",
    "domain_unverified": "the sending domain is not verified (SPF, DKIM, DMARC)",
    "frequency_cap": "the contact reached a frequency cap",
    "quiet_hours": "deferred: quiet hours in the recipient's local time",
    "insufficient_balance": "the prepaid balance does not cover the send",
}

Verdict = Literal["send", "refuse", "defer"]


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    code: str | None = None
    detail: str | None = None
    until: datetime | None = None  # a deferral's next allowed time (UTC, on a minute)


SEND: Final = Decision("send")


@dataclass(frozen=True, slots=True)
class SendRequest:
    """One message to one recipient, as the policy sees it."""

    message_id: str
    contact_id: str | None
    store_id: str | None
    channel: str
    purpose: str
    address: str  # normalised: email lower-cased, phone E.164
    sending_domain: str | None = None  # email: the From domain
    whatsapp_template: WhatsAppTemplate | None = None  # WhatsApp: None = a free-form (session) message
    cost_minor: int = 0  # estimated cost, checked against the balance


@dataclass(frozen=True, slots=True)
class WhatsAppTemplate:
    category: str  # marketing | utility | authentication
    approved: bool


@dataclass(frozen=True, slots=True)
class Recipient:
    """What the policy needs to know about a contact."""

    timezone: str | None = None
    phone: str | None = None
    country: str | None = None
    whatsapp_inbound_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class FrequencyCap:
    """At most `limit` marketing messages per `window` to a contact, on `channel` ('*' = all)."""

    channel: str
    limit: int
    window: timedelta


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """A workspace's policy settings (workspaces.settings["policy"]); see `parse_settings`."""

    frequency_caps: tuple[FrequencyCap, ...] = ()
    quiet_hours: Mapping[str, Window] = field(default_factory=dict)  # channel -> allowed local hours
    channel_order: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # country or '*' -> channels

    @property
    def longest_cap(self) -> timedelta:
        return max((cap.window for cap in self.frequency_caps), default=timedelta(0))

    @property
    def smallest_limit(self) -> int:
        return min((cap.limit for cap in self.frequency_caps), default=0)


DEFAULT_SETTINGS_JSON: Final[Mapping[str, Any]] = {
    "frequency_caps": [{"channel": "*", "limit": 3, "hours": 24}, {"channel": "*", "limit": 10, "hours": 168}],
    "quiet_hours": {"sms": "08:00-21:00", "whatsapp": "08:00-21:00", "push": "08:00-21:00"},
    "channel_order": {"*": ["email", "sms", "whatsapp", "push"], "US": ["email", "sms"],
                      "BR": ["whatsapp", "sms", "email"], "IN": ["whatsapp", "sms", "email"],
                      "AE": ["sms", "whatsapp"], "SA": ["sms", "whatsapp"]},
}


class SettingsInvalid(ValueError):
    """A policy setting is wrong; `field` names it (e.g. 'frequency_caps[1].hours')."""

    def __init__(self, field_name: str, why: str) -> None:
        super().__init__(f"{field_name}: {why}")
        self.field = field_name
        self.why = why


def parse_settings(raw: Mapping[str, Any] | None) -> PolicySettings:
    """Settings from their JSON form, defaults for what is absent. Raises SettingsInvalid."""
    merged = {**DEFAULT_SETTINGS_JSON, **(raw or {})}
    unknown = set(merged) - set(DEFAULT_SETTINGS_JSON)
    if unknown:
        raise SettingsInvalid(sorted(unknown)[0], f"unknown setting; known: {', '.join(DEFAULT_SETTINGS_JSON)}")
    return PolicySettings(frequency_caps=_caps(merged["frequency_caps"]),
                          quiet_hours=_quiet_hours(merged["quiet_hours"]),
                          channel_order=_channel_order(merged["channel_order"]))


def _caps(raw: Any) -> tuple[FrequencyCap, ...]:
    if not isinstance(raw, list):
        raise SettingsInvalid("frequency_caps", "must be a list of {channel, limit, hours}")
    caps = []
    for i, item in enumerate(raw):
        where = f"frequency_caps[{i}]"
        if not isinstance(item, Mapping) or set(item) - {"channel", "limit", "hours"}:
            raise SettingsInvalid(where, "must be an object with channel, limit and hours")
        channel = item.get("channel", "*")
        if channel != "*" and channel not in CHANNELS:
            raise SettingsInvalid(f"{where}.channel", f"must be '*' or one of {', '.join(CHANNELS)}")
        limit, hours = item.get("limit"), item.get("hours")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise SettingsInvalid(f"{where}.limit", "must be a whole number ≥ 1")
        if not isinstance(hours, int | float) or isinstance(hours, bool) or not 0 < hours <= 24 * 366:
            raise SettingsInvalid(f"{where}.hours", "must be a number of hours between 0 and 8784")
        caps.append(FrequencyCap(channel, limit, timedelta(hours=hours)))
    return tuple(caps)


def _quiet_hours(raw: Any) -> dict[str, Window]:
    if not isinstance(raw, Mapping):
        raise SettingsInvalid("quiet_hours",
                              'must map a channel to its allowed local hours, e.g. {"sms": "08:00-21:00"}')
    windows = {}
    for channel, text in raw.items():
        if channel not in CHANNELS:
            raise SettingsInvalid(f"quiet_hours.{channel}", f"unknown channel; use one of {', '.join(CHANNELS)}")
        if text is None:
            continue  # no quiet hours for this channel
        try:
            windows[channel] = Window.parse(str(text))
        except ValueError as exc:
            raise SettingsInvalid(f"quiet_hours.{channel}", str(exc)) from None
    return windows


def _channel_order(raw: Any) -> dict[str, tuple[str, ...]]:
    if not isinstance(raw, Mapping):
        raise SettingsInvalid("channel_order", 'must map a country code or "*" to a list of channels')
    order = {}
    for country, channels in raw.items():
        where = f"channel_order.{country}"
        if country != "*" and not (isinstance(country, str) and len(country) == 2 and country.isalpha()
                                   and country.isupper()):
            raise SettingsInvalid(where, 'use an ISO 3166 alpha-2 country code in capitals, or "*"')
        if (not isinstance(channels, list) or not channels or len(set(channels)) != len(channels)
                or any(c not in CHANNELS for c in channels)):
            raise SettingsInvalid(where, f"must be a non-empty list of distinct channels from {', '.join(CHANNELS)}")
        order[country] = tuple(channels)
    return order


def settings_json(settings: PolicySettings) -> dict[str, Any]:
    """The JSON form of `settings` (what the API shows)."""
    return {
        "frequency_caps": [{"channel": c.channel, "limit": c.limit, "hours": c.window.total_seconds() / 3600}
                           for c in settings.frequency_caps],
        "quiet_hours": {ch: f"{w.start:%H:%M}-{w.end:%H:%M}" for ch, w in settings.quiet_hours.items()},
        "channel_order": {k: list(v) for k, v in settings.channel_order.items()},
    }


# -- the preloaded context ---------------------------------------------------------------------------

ConsentKey = tuple[str, str, str, str | None]  # (contact, channel, purpose, store)
# (recorded at, state). "Recorded at" is only compared with other entries of the same context (the
# later of a store's and the workspace-wide record applies), so a loader may give the database's
# own sortable form (SQLite's UTC text) instead of building a datetime per row.
ConsentEntry = tuple[Any, str]


@dataclass(slots=True)
class PolicyContext:
    """Everything `decide` reads, loaded for a whole batch by services/policy.py.

    consents: latest ConsentEntry per key; suppressed: (channel, address) -> reason;
    sends: per contact, (sent_at, channel) of its marketing messages within the longest cap window;
    domains: sending domain -> status; balance_minor: None when the workspace is not metered."""

    settings: PolicySettings
    consents: dict[ConsentKey, ConsentEntry] = field(default_factory=dict)
    suppressed: dict[tuple[str, str], str] = field(default_factory=dict)
    sends: dict[str, list[tuple[datetime, str]]] = field(default_factory=dict)
    recipients: dict[str, Recipient] = field(default_factory=dict)
    domains: dict[str, str] = field(default_factory=dict)
    balance_minor: int | None = None
    fallback_timezone: str | None = None  # the store's, when nothing about the recipient tells

    def note_sent(self, request: SendRequest, now: datetime) -> None:
        """An allowed send counts towards the contact's caps and reserves its cost."""
        if request.purpose == "marketing" and request.contact_id is not None:
            self.sends.setdefault(request.contact_id, []).append((now, request.channel))
        if self.balance_minor is not None:
            self.balance_minor -= request.cost_minor


def decide(request: SendRequest, ctx: PolicyContext, now: datetime) -> Decision:
    """The first check that does not allow the send, or SEND (the checks in CHECKS order, written
    out: this runs once per recipient of every batch)."""
    return (check_suppression(request, ctx, now) or check_consent(request, ctx, now)
            or check_whatsapp(request, ctx, now) or check_sending_domain(request, ctx, now)
            or check_frequency(request, ctx, now) or check_quiet_hours(request, ctx, now)
            or check_balance(request, ctx, now) or SEND)


def decide_all(requests: Sequence[SendRequest], ctx: PolicyContext, now: datetime) -> list[Decision]:
    """Decide a batch in order; each allowed send is noted before the next is decided."""
    decisions = []
    for request in requests:
        decision = decide(request, ctx, now)
        if decision.verdict == "send":
            ctx.note_sent(request, now)
        decisions.append(decision)
    return decisions


def _refuse(code: str, detail: str | None = None) -> Decision:
    return Decision("refuse", code, detail or REFUSALS[code])


# Suppression reasons that also stop transactional messages: the address cannot or must not
# receive anything (services/suppressions.py keeps the list).
BLOCKS_TRANSACTIONAL: Final = frozenset({"hard_bounce", "complaint", "invalid", "erased"})


def check_suppression(request: SendRequest, ctx: PolicyContext, now: datetime) -> Decision | None:
    reason = ctx.suppressed.get((request.channel, request.address))
    if reason is None or (request.purpose == "transactional" and reason not in BLOCKS_TRANSACTIONAL):
        return None
    return _refuse(f"suppressed:{reason}")


def consent_state(ctx: PolicyContext, contact_id: str, channel: str, purpose: str,
                  store_id: str | None) -> str | None:
    """The state that applies to a send from `store_id`: the later of the store's own record and
    the workspace-wide one (store None), so "unsubscribe from everything" beats an older store
    grant and a newer store grant beats an older global withdrawal."""
    consents = ctx.consents
    everywhere = consents.get((contact_id, channel, purpose, None))
    own = consents.get((contact_id, channel, purpose, store_id)) if store_id is not None else None
    if own is None:
        return everywhere[1] if everywhere is not None else None
    if everywhere is not None and everywhere[0] > own[0]:
        return everywhere[1]
    return own[1]


def check_consent(request: SendRequest, ctx: PolicyContext, now: datetime) -> Decision | None:
    """Marketing needs a grant; transactional messages go unless consent was withdrawn."""
    if request.contact_id is None:
        return _refuse("consent:missing", "no contact is known for this address") \
            if request.purpose == "marketing" else None
    state = consent_state(ctx, request.contact_id, request.channel, request.purpose, request.store_id)
    if request.purpose == "transactional":
        return _refuse("consent:withdrawn") if state == "withdrawn" else None
    if state == "granted":
        return None
    return _refuse({"withdrawn": "consent:withdrawn", "pending": "consent:pending"}.get(state or "", "consent:missing"))


def check_whatsapp(request: SendRequest, ctx: PolicyContext, now: datetime) -> Decision | None:
    if request.channel != "whatsapp":
        return None
    template = request.whatsapp_template
    if template is None:
        recipient = ctx.recipients.get(request.contact_id or "")
        last = recipient.whatsapp_inbound_at if recipient is not None else None
        if last is None or now - last >= WHATSAPP_WINDOW:
            return _refuse("whatsapp:window_closed",
                           "free-form WhatsApp messages may only be sent within 24 h of the contact's last "
                           "message; use an approved template")
        return None
    if not template.approved:
        return _refuse("whatsapp:template_not_approved")
    if template.category == "marketing" and request.address.startswith("+1"):
        return _refuse("whatsapp:marketing_to_us")
    return None


def check_sending_domain(request: SendRequest, ctx: PolicyContext, now: datetime) -> Decision | None:
    """Marketing email only from a domain whose SPF, DKIM and DMARC checks passed."""
    if request.channel != "email" or request.purpose != "marketing":
        return None
    if request.sending_domain is None or ctx.domains.get(request.sending_domain) != "verified":
        return _refuse("domain_unverified",
                       f"{request.sending_domain or 'the sender'} is not a verified sending domain: "
                       f"run `herald domains verify`")
    return None


def check_frequency(request: SendRequest, ctx: PolicyContext, now: datetime) -> Decision | None:
    """Rolling windows over the contact's marketing sends; transactional messages are exempt."""
    if request.purpose != "marketing" or request.contact_id is None or not ctx.settings.frequency_caps:
        return None
    sent = ctx.sends.get(request.contact_id)
    if not sent or len(sent) < ctx.settings.smallest_limit:
        return None  # fewer sends in the longest window than any cap allows: no cap can be reached
    for cap in ctx.settings.frequency_caps:
        anywhere = cap.channel == "*"
        if not anywhere and cap.channel != request.channel:
            continue
        since = now - cap.window
        count = 0
        for at, channel in sent:
            if at > since and (anywhere or channel == cap.channel):
                count += 1
        if count >= cap.limit:
            scope = "all channels" if cap.channel == "*" else cap.channel
            return _refuse("frequency_cap", f"{count} marketing messages on {scope} in the last "
                                            f"{cap.window.total_seconds() / 3600:g} h (cap {cap.limit})")
    return None


def check_quiet_hours(request: SendRequest, ctx: PolicyContext, now: datetime) -> Decision | None:
    """Marketing waits for the recipient's allowed local hours; US marketing SMS 08:00-21:00."""
    if request.purpose != "marketing":
        return None
    windows = quiet_windows(request, ctx)
    if not windows:
        return None
    recipient = ctx.recipients.get(request.contact_id or "") or Recipient()
    phone = request.address if request.channel in ("sms", "whatsapp") else recipient.phone
    zones = zones_for(recipient.timezone, phone, recipient.country)
    if not zones and ctx.fallback_timezone:
        zones = (ctx.fallback_timezone,)
    if not zones:
        return None
    until = _next_allowed_all(now, zones, windows)
    if until == now:
        return None
    return Decision("defer", "quiet_hours", f"quiet hours in {zones[0]}{' and other zones' if len(zones) > 1 else ''}"
                                            f"; next allowed {until:%Y-%m-%d %H:%M} UTC", until)


def quiet_windows(request: SendRequest, ctx: PolicyContext) -> list[Window]:
    windows = []
    configured = ctx.settings.quiet_hours.get(request.channel)
    if configured is not None:
        windows.append(configured)
    if request.channel == "sms" and _is_us_number(request.address, ctx.recipients.get(request.contact_id or "")):
        windows.append(US_SMS_WINDOW)
    return windows


def _is_us_number(address: str, recipient: Recipient | None) -> bool:
    """+1 numbers are NANP (US, Canada, Caribbean); the US rule applies to all of them unless the
    contact is known to be elsewhere: stricter is safer, and Canada's CASL practice is similar."""
    return address.startswith("+1") and (recipient is None or recipient.country in (None, "US", "CA"))


def _next_allowed_all(now: datetime, zones: tuple[str, ...], windows: list[Window]) -> datetime:
    """The earliest time ≥ now allowed by every window (bounded: windows are few)."""
    at = now
    for _ in range(8):
        moved = at
        for window in windows:
            moved = next_allowed(moved, zones, window)
        if moved == at:
            return at
        at = moved
    return at


def check_balance(request: SendRequest, ctx: PolicyContext, now: datetime) -> Decision | None:
    """A paid send needs the prepaid balance to cover it (C9). An unmetered workspace (no balance
    configured) is never refused."""
    if ctx.balance_minor is None or request.cost_minor <= 0:
        return None
    if request.cost_minor > ctx.balance_minor:
        return _refuse("insufficient_balance",
                       f"the send costs {request.cost_minor} (minor units), the balance left is {ctx.balance_minor}")
    return None


CHECKS: Final = (check_suppression, check_consent, check_whatsapp, check_sending_domain, check_frequency,
                 check_quiet_hours, check_balance)


# -- best channel ------------------------------------------------------------------------------------

def channel_order(settings: PolicySettings, country: str | None) -> tuple[str, ...]:
    """The workspace's preferred channels for a recipient in `country` ('*' when not set for it)."""
    order = settings.channel_order
    return order.get(country or "", order.get("*", ("email",)))


def best_channels(settings: PolicySettings, country: str | None, addresses: Mapping[str, str | None]) -> list[str]:
    """A "best channel" send's channels in order: the country's order, keeping the channels the
    recipient has an address for. The caller sends on the first one the policy allows and falls
    back along the rest."""
    return [channel for channel in channel_order(settings, country) if addresses.get(channel)]
