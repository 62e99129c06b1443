"""Map an SMTP failure (enhanced status code, reply code, diagnostic text) to one `FailureReason`
and whether it is permanent. Shared by the SMTP provider (live replies) and the DSN parser
(bounces.py). Pure, table driven; every regex is compiled once at import.

Order of evidence (first that decides wins):
  1. the enhanced status code (RFC 3463, IANA "SMTP Enhanced Status Codes" registry), refined by
     text where the code alone is ambiguous (x.7.x covers spam, DMARC and rate limits alike);
  2. well-known diagnostic texts of the big receivers (Gmail, Outlook, Yahoo, Postfix, Exim, qmail);
  3. the SMTP reply code (RFC 5321 section 4.2);
  4. the class digit: 4 = temporary (TRANSIENT), 5 = permanent (UNKNOWN).
Permanence is the class digit of the status code, else of the reply code, else a guess from the
text ("temporary", "try again", ...), else permanent.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from herald.domain.delivery import FailureReason as R

__all__ = ["classify", "parse_status", "refine_status"]

# RFC 3463: status-code = class "." subject "." detail; class 2/4/5, subject 0-7 in practice,
# detail 1*3digit. The guards keep IP addresses (10.5.1.1) and versions (2.11.3) out; the left one
# is checked in code (a leading look-behind would slow the scan ~10x, see _rx).
_STATUS = re.compile(r"([245])\.([0-7])\.(\d{1,3})(?!\w|\.\d)")

# Only the first few KB of a diagnostic carry meaning; bound the work per call.
_TEXT_LIMIT = 4000


def parse_status(text: str) -> str | None:
    """The first failure (4.x.x/5.x.x) enhanced status code in `text`, else the first success
    code (2.x.x), else None. Leading zeros are dropped ("5.01.001" is not produced)."""
    success: str | None = None
    text = text[:_TEXT_LIMIT]
    for match in _STATUS.finditer(text):
        start = match.start()
        if start and (text[start - 1].isalnum() or text[start - 1] in "._"):
            continue
        code = f"{match[1]}.{int(match[2])}.{int(match[3])}"
        if match[1] != "2":
            return code
        success = success or code
    return success


def refine_status(status: str | None, text: str) -> str | None:
    """The enhanced code to report for a failure: the one in `status` (e.g. a DSN "Status: 5.0.0
    (permanent failure)"), unless that is generic (x.0.0, or x.N.0) and `text` (the diagnostic)
    holds a more specific code of the same class and subject; without `status`, the code in `text`."""
    code = parse_status(status) if status else None
    found = parse_status(text) if text else None
    if code is None or found is None or found == code or found[0] != code[0]:
        return code or found
    _, subject, detail = code.split(".")
    if detail == "0" and subject in ("0", found.split(".")[1]):
        return found
    return code


def _lower_pattern(pattern: str) -> str:
    """`pattern` in lower case, escapes (\\S, \\W, \\B, ...) untouched."""
    out, escaped = [], False
    for char in pattern:
        out.append(char if escaped else char.lower())
        escaped = char == "\\" and not escaped
    return "".join(out)


def _rx(*alternatives: str) -> re.Pattern[str]:
    """One alternation, matched against lower-cased text. Case folding (re.IGNORECASE) and a
    leading \\b defeat the regex engine's first-character scan and cost ~10x: use _word()."""
    return re.compile("|".join(f"(?:{_lower_pattern(a)})" for a in alternatives))


def _word(word: str) -> str:
    """`word` as a whole word, its left boundary checked after the literal (see _rx)."""
    return rf"{word}\b(?<![a-z0-9]{word})"


def _fold(text: str) -> str:
    """What the text patterns see: lower case, typographic apostrophes made plain."""
    return text.lower().replace("\u2019", "'")


# --- diagnostic texts -------------------------------------------------------------------------
# Ordered: the first pattern that matches decides. Specific before generic: a rate limit talks
# about "quota" too, a blocklist rejection often says "mailbox unavailable".

_THROTTLED_TEXT = _rx(
    r"too many (?:connections|messages|recipients|concurrent|emails|mails|sessions|simultaneous)",
    r"rate[ -]?limit", r"throttl", r"receiving mail at a rate", r"unusual rate", r"too fast",
    *(rf"{kind} quota (?:exceeded|reached)" for kind in ("sending", "daily", "hourly", "message", "send")),
    r"maximum sending rate",
    r"exceeded (?:the )?(?:\w+ )?(?:sending|message|connection) (?:rate|limit)", r"slow down",
    r"temporarily rate limited", r"RateLimit",
)
_EXPIRED_TEXT = _rx(
    r"retry time(?:out)? (?:exceeded|reached)", r"delivery time expired", r"message expired",
    r"in the queue too long", r"too long in (?:the )?queue", r"could not be delivered within",
    r"maximum (?:queue|delivery) (?:lifetime|time)", r"delivery (?:period|time) (?:has )?expired",
)
_AUTH_TEXT = _rx(
    r"authentication credentials invalid", r"username and password not accepted",
    r"invalid (?:login|credentials)", r"bad (?:username|user name) or password",
    r"authentication unsuccessful", r"auth failed", r"authentication failed", r"SMTP AUTH (?:is )?required",
)
_POLICY_TEXT = _rx(
    _word("dmarc"), _word("spf"), _word("dkim"), r"unauthenticated", r"fails? to pass authentication",
    r"authentication (?:checks|information|results)", r"not authenticated", _word("arc"),
    r"message (?:is )?too (?:big|large)", r"message size exceeds", r"size (?:limit|exceeds)",
    r"exceeds (?:the )?(?:maximum|size)", r"reverse DNS", _word("ptr"), _word("rdns"),
    r"virus", r"malware", r"attachment", r"content (?:rejected|filter|policy)",
    r"relay(?:ing)? (?:access )?(?:denied|not permitted|prohibited)", r"TLS (?:is )?required",
    r"sender address rejected", r"policy reasons", r"forwarding to remote hosts disabled",
)
_BLOCKED_TEXT = _rx(
    r"spamhaus", r"spamcop", r"barracuda", _word("sorbs"), _word("surbl"), _word("uribl"), _word("rbl"),
    _word("dnsbl"), r"block[ -]?list", r"black[ -]?list", _word("blocked"), _word("banned"), r"reputation",
    _word("spam"), r"unsolicited", r"junk mail", r"listed (?:at|in|on|by)\b", r"denied by policy",
    r"rejected (?:due to|by) (?:\w+ )?policy",
    *(rf"{who} (?:is |was )?(?:rejected|denied)" for who in ("sender", "client", "ip", "host")),
    r"access denied",
)
_MAILBOX_FULL_TEXT = _rx(
    r"mail ?box (?:is )?(?:full|over ?quota)", r"over ?quota",
    r"over (?:the |its |his |her )?(?:allowed |storage |mailbox |disk )?quota", r"quota exceeded",
    r"exceeded (?:\w+ )?quota",
    r"exceeded (?:the |his |her |its )?storage", r"mailbox size limit", r"insufficient (?:disk |storage )?space",
    r"out of (?:storage|space)", r"storage (?:allocation|quota)", r"mail ?folder is full", r"full mail ?box",
    r"inbox is full", r"user(?:'s)? (?:mailbox )?(?:is )?(?:over|has exceeded)",
)
_HOST_UNKNOWN_TEXT = _rx(
    r"host or domain name not found", r"host (?:not found|unknown)", r"unknown host",
    r"domain (?:not found|does not exist|doesn't exist|name not found|is not found)", r"no such domain",
    r"no mx\b", r"null MX", r"name or service not known", r"unrouteable (?:mail )?domain",
    r"unrouteable address", _word("nxdomain"), r"DNS (?:lookup|resolution) failed", r"host name lookup failure",
)
_INVALID_ADDRESS_TEXT = _rx(
    r"user unknown", r"unknown user", r"no such (?:user|mailbox|recipient|address|account|person)",
    r"user (?:does not exist|doesn't exist|not found|not exist)", r"RecipientNotFound",
    r"recipient (?:not found|unknown|does not exist|doesn't exist|address rejected)",
    r"account (?:that you tried to reach )?(?:does not exist|doesn't exist|not found|is disabled)",
    r"mail ?box (?:not found|does not exist|doesn't exist|unavailable|is unavailable|is disabled|disabled|"
    r"is inactive|inactive|not available|name not allowed)",
    r"invalid (?:recipient|mailbox|address|e-?mail address)", r"address (?:does not exist|not found|unknown)",
    r"unknown (?:recipient|local[ -]part|address|mailbox)", r"not a valid (?:mailbox|recipient|user)",
    r"no mailbox here", r"bad destination mailbox", r"doesn't have an? [\w.-]+ account",
    *(rf"{what} (?:has been |is )?(?:deactivated|disabled|suspended|closed|terminated)"
      for what in ("account", "user", "mailbox")),
    r"undeliverable address", r"address rejected", r"not our customer", r"no longer (?:valid|available|active)",
)

# (pattern, reason), tried in order.
_TEXT_RULES: tuple[tuple[re.Pattern[str], R], ...] = (
    (_THROTTLED_TEXT, R.THROTTLED),
    (_EXPIRED_TEXT, R.EXPIRED),
    (_AUTH_TEXT, R.AUTH_FAILED),
    (_POLICY_TEXT, R.POLICY),
    (_BLOCKED_TEXT, R.BLOCKED),
    (_MAILBOX_FULL_TEXT, R.MAILBOX_FULL),
    (_HOST_UNKNOWN_TEXT, R.HOST_UNKNOWN),
    (_INVALID_ADDRESS_TEXT, R.INVALID_ADDRESS),
)

_TEMPORARY_TEXT = _rx(
    r"temporar", r"try again later", r"please try again", r"try again in", r"deferred",
    r"will (?:retry|keep trying|try again)", _word("delayed"), r"not yet been delivered", r"still trying", r"greylist",
)


# --- enhanced status codes --------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _StatusRule:
    """The reason for one "subject.detail". `refine` lets text override an ambiguous code; a
    `None` reason (or `temporary` for class 4) means "no opinion, look further"."""

    reason: R | None
    temporary: R | None = None          # the reason for class 4, when it differs
    refine: Sequence[tuple[re.Pattern[str], R]] = ()


_GREYLIST_TEXT = _rx(r"grey ?list", r"gray ?list", r"try again in \d+ ?(?:s|sec|seconds|minutes)\b")

# Texts that may sharpen a security/policy (x.7.x) rejection. Greylisting and rate first (Gmail's
# 4.7.28 and 4.7.0 "unusual rate" are throttling), then auth (DMARC/SPF/DKIM), then spam/reputation.
_POLICY_REFINE: tuple[tuple[re.Pattern[str], R], ...] = (
    (_GREYLIST_TEXT, R.TRANSIENT),
    (_THROTTLED_TEXT, R.THROTTLED),
    (_AUTH_TEXT, R.AUTH_FAILED),
    (_POLICY_TEXT, R.POLICY),
    (_BLOCKED_TEXT, R.BLOCKED),
    (_INVALID_ADDRESS_TEXT, R.INVALID_ADDRESS),   # "550 5.7.1 Unknown recipient" (some Exchange)
)
# SMTP AUTH codes (RFC 4954) only mean "our credentials" on a submission server; receiving MXs
# reuse them for policy ("554 5.7.9 Message not accepted for policy reasons", Yahoo).
_MX_AUTH_REFINE = ((_POLICY_TEXT, R.POLICY), (_BLOCKED_TEXT, R.BLOCKED))
_DISABLED_REFINE = ((_THROTTLED_TEXT, R.THROTTLED), (_MAILBOX_FULL_TEXT, R.MAILBOX_FULL))
_NULL_MX_REFINE = ((_rx(r"null MX"), R.HOST_UNKNOWN),)
# Microsoft 365 directory-based edge blocking: "550 5.4.1 Recipient address rejected: Access denied".
_EDGE_BLOCK_REFINE = ((_rx(r"recipient address rejected"), R.INVALID_ADDRESS),)
_SECURITY_POLICY = _StatusRule(R.POLICY, None, ((_THROTTLED_TEXT, R.THROTTLED),))
_AUTH = _StatusRule(R.AUTH_FAILED, None, _MX_AUTH_REFINE)

# Keyed by "subject.detail" (IANA "SMTP Enhanced Status Codes"). Codes not here and not covered by
# _SUBJECT_RULES (x.0.0, x.1.0, x.2.0, x.3.0, x.4.0, x.5.x, ...) are too generic: the text decides.
_STATUS_RULES: dict[str, _StatusRule] = {
    "1.1": _StatusRule(R.INVALID_ADDRESS),           # bad destination mailbox address
    "1.2": _StatusRule(R.HOST_UNKNOWN),              # bad destination system address
    "1.3": _StatusRule(R.INVALID_ADDRESS),           # bad destination mailbox address syntax
    "1.4": _StatusRule(R.INVALID_ADDRESS),           # destination mailbox address ambiguous
    "1.6": _StatusRule(R.INVALID_ADDRESS),           # mailbox has moved, no forwarding address
    "1.7": _StatusRule(R.POLICY),                    # bad sender's mailbox address syntax
    "1.8": _StatusRule(R.POLICY),                    # bad sender's system address
    "1.10": _StatusRule(R.INVALID_ADDRESS, refine=_NULL_MX_REFINE),  # RFC 7505 null MX; Outlook's
                                                     # "RecipientNotFound" uses it too
    "2.1": _StatusRule(R.INVALID_ADDRESS, R.TRANSIENT, _DISABLED_REFINE),  # mailbox disabled
    "2.2": _StatusRule(R.MAILBOX_FULL),              # mailbox full
    "2.3": _StatusRule(R.POLICY),                    # message length exceeds administrative limit
    "3.1": _StatusRule(R.UNKNOWN, R.TRANSIENT),      # mail system full
    "3.4": _StatusRule(R.POLICY),                    # message too big for system
    "4.1": _StatusRule(None, None, _EDGE_BLOCK_REFINE),  # no answer from host
    "4.4": _StatusRule(R.HOST_UNKNOWN),              # unable to route
    "4.5": _StatusRule(R.THROTTLED),                 # mail system congestion
    "4.7": _StatusRule(R.EXPIRED),                   # delivery time expired
    "5.3": _StatusRule(R.THROTTLED),                 # too many recipients
    "7.0": _StatusRule(R.BLOCKED, R.THROTTLED, _POLICY_REFINE),
    "7.1": _StatusRule(R.BLOCKED, R.THROTTLED, _POLICY_REFINE),  # delivery not authorized, refused
    "7.2": _StatusRule(R.POLICY),                    # mailing list expansion prohibited
    "7.8": _AUTH,                                    # authentication credentials invalid
    "7.9": _AUTH,                                    # authentication mechanism too weak
    "7.11": _AUTH,                                   # encryption required for auth mechanism
    "7.12": _AUTH,                                   # password transition needed
    "7.13": _AUTH,                                   # user (our SMTP AUTH) account disabled
    "7.17": _StatusRule(R.INVALID_ADDRESS),          # mailbox owner has changed (RFC 7293)
    "7.18": _StatusRule(R.INVALID_ADDRESS),          # domain owner has changed (RFC 7293)
    "7.28": _StatusRule(R.BLOCKED, R.THROTTLED),     # mail flood detected (Gmail 421 4.7.28)
}
for _detail in (3, 4, 5, 6, 7, 10, 14, 15, 16, 20, 21, 22, 23, 24, 25, 26, 27, 29, 30):
    # crypto/TLS, DKIM (20-22), SPF (23-24), reverse DNS (25), multiple auth (26), sender null MX
    # (27), ARC (29), REQUIRETLS (30): the receiver's authentication/security policy.
    _STATUS_RULES[f"7.{_detail}"] = _SECURITY_POLICY

# Any other detail of these subjects (Microsoft's 5.7.606-649 blocklists, 5.7.133 group policy).
_SUBJECT_RULES: dict[str, _StatusRule] = {
    "6": _StatusRule(R.POLICY),                                    # media/content
    "7": _StatusRule(R.BLOCKED, R.THROTTLED, _POLICY_REFINE),      # security or policy
}


def _refine(rules: Sequence[tuple[re.Pattern[str], R]], folded: str) -> R | None:
    for pattern, reason in rules:
        if pattern.search(folded):
            return reason
    return None


def _reason_from_status(status: str, folded: str) -> R | None:
    cls, _, subject_detail = status.partition(".")
    rule = _STATUS_RULES.get(subject_detail) or _SUBJECT_RULES.get(subject_detail.partition(".")[0])
    if rule is None:
        return None
    refined = _refine(rule.refine, folded)
    if refined is not None:
        return refined
    if cls == "4":
        # A temporary x.7.x that no text explains is most often a soft block: slow down, retry.
        return rule.temporary or rule.reason
    return rule.reason


# RFC 5321 4.2.2/4.2.3 replies specific enough to name a reason when nothing else did.
_REPLY_RULES: dict[int, R] = {
    421: R.THROTTLED,        # service not available, closing channel (usually connection limits)
    454: R.AUTH_FAILED,      # temporary authentication failure (RFC 4954)
    530: R.AUTH_FAILED,      # authentication required
    534: R.AUTH_FAILED,      # authentication mechanism too weak
    535: R.AUTH_FAILED,      # authentication credentials invalid
    538: R.AUTH_FAILED,      # encryption required for requested authentication mechanism
    551: R.INVALID_ADDRESS,  # user not local
    552: R.MAILBOX_FULL,     # exceeded storage allocation
    553: R.INVALID_ADDRESS,  # mailbox name not allowed
}


def _is_permanent(status: str | None, reply_code: int | None, folded: str) -> bool:
    if status is not None and status[0] in "45":
        return status[0] == "5"
    if reply_code is not None and 400 <= reply_code < 600:
        return reply_code >= 500
    return not _TEMPORARY_TEXT.search(folded)


def classify(status: str | None, reply_code: int | None, text: str) -> tuple[R, bool]:
    """(reason, permanent) for one SMTP failure. `status` may be None or any text holding an
    enhanced code; when None, a code inside `text` is used ("550 5.1.1 <x>: user unknown")."""
    text = (text or "")[:_TEXT_LIMIT]
    code = refine_status(status, text)
    if code is not None and code[0] == "2":
        code = None   # a success code says nothing about a failure
    folded = _fold(text)
    permanent = _is_permanent(code, reply_code, folded)
    reason = _reason_from_status(code, folded) if code else None
    if reason is None:
        reason = _refine(_TEXT_RULES, folded)
    if reason is None and reply_code is not None:
        reason = _REPLY_RULES.get(reply_code)
    if reason is None:
        reason = R.UNKNOWN if permanent else R.TRANSIENT
    return reason, permanent
