"""SMS keywords: STOP, HELP and START, as carriers (CTIA, the TCPA rules) and providers expect them.

A message is a keyword only when the WHOLE message is one, ignoring case, accents, spaces and
punctuation: "Stop", " STOP. ", "stop all", "Opt-out", "ARRÊT" are keywords; "please stop
texting me" and "stop 2" are not (only letters and digits count, and a digit is kept).
"""

from __future__ import annotations

import unicodedata
from enum import StrEnum
from functools import lru_cache
from typing import Final


class Keyword(StrEnum):
    STOP = "stop"
    HELP = "help"
    START = "start"


STOP_WORDS: Final = frozenset({
    # English (CTIA / US carriers, Twilio's defaults)
    "stop", "stopall", "unsubscribe", "cancel", "end", "quit", "optout", "revoke",
    # French, Spanish, Portuguese, Italian, German, Dutch, Nordic
    "arret", "arreter", "desabonner", "desinscrire",
    "parar", "pare", "alto", "baja", "cancelar", "desuscribir",
    "sair", "descadastrar",
    "fermati", "basta", "disiscrivimi",
    "stopp", "abmelden", "afmelden", "avsluta", "afmeld",
})
HELP_WORDS: Final = frozenset({"help", "info", "aide", "ayuda", "ajuda", "aiuto", "hilfe"})
START_WORDS: Final = frozenset({"start", "unstop", "yes", "subscribe", "optin"})

_WORDS: Final = {**dict.fromkeys(STOP_WORDS, Keyword.STOP), **dict.fromkeys(HELP_WORDS, Keyword.HELP),
                 **dict.fromkeys(START_WORDS, Keyword.START)}
_LONGEST: Final = max(len(w) for w in _WORDS)
_MAX_SCANNED: Final = 200   # a longer message cannot be a keyword once spaces and punctuation go


def normalise(body: str) -> str:
    """The letters and digits of the message, case-folded and without accents."""
    decomposed = unicodedata.normalize("NFKD", body[:_MAX_SCANNED].casefold())
    return "".join(ch for ch in decomposed if ch.isalnum())


@lru_cache(maxsize=4096)
def classify(body: str) -> Keyword | None:
    """The keyword the whole message is, or None for an ordinary message."""
    if len(body) > _MAX_SCANNED:
        return None
    word = normalise(body)
    if len(word) > _LONGEST:
        return None
    return _WORDS.get(word)
