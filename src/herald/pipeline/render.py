"""The render stage: email templates (Liquid over MJML or HTML) compiled once, rendered per recipient.

Compile (`compile_email`, once per template version, on save and when a worker loads it):
MJML -> HTML (mjml-python), CSS inlined (css-inline), then subject, HTML and text parsed as
python-liquid templates. Liquid markup is swapped for opaque placeholders while MJML and the
CSS inliner see the document (they would otherwise escape `>` in `{% if a > b %}` or move
`{% for %}` out of tables), then put back. A plain-text Liquid template is derived from the
compiled HTML when the seller gave none, so a recipient costs three Liquid renders and a little
string work: no MJML, no CSS inlining, no HTML parsing.

Render (`render_email`, per recipient): values are HTML-escaped in the HTML body (buyer data is
untrusted), not in subject and text. Undefined variables render empty; `strict=True` (preview,
test sends) makes printing or looping over an undefined variable an error, while `{% if x %}`
and `| default:` still work. Resource limits (loop iterations, output size, context depth,
local variables) turn into `RenderError`; `{% include %}` and `{% render %}` do not exist.

Variables (the seller-facing contract; see SAMPLE_VARIABLES for an example of each):
    contact.first_name, contact.last_name, contact.email, contact.country (ISO 3166 alpha-2),
    contact.language (e.g. "pt-BR"), contact.tags (list), contact.orders_count,
    contact.attributes.<key> (the store's custom fields)
    store.name, store.url, store.address (postal address: required by law in marketing email)
    order.name ("#1001"), order.total, order.subtotal, order.currency (ISO 4217),
        order.lines (list of {title, quantity, price, total, sku, image}),
        order.discount_codes (list of strings), order.status_url, order.shipping_country,
        order.shipping_address {name, address1, address2, city, zip, province, country},
        order.tracking {company, number, url}
    checkout.recovery_url, checkout.lines (as order.lines), checkout.total
    unsubscribe_url (the recipient's one-click unsubscribe page; empty in transactional email)
    preferences_url (the contact's hosted preference centre; empty when no contact is known)
Amounts are `Amount`s: decimal strings as stores send them ("59.90"), printed as given, that
compare as numbers (`{% if order.total > 50 %}`) and work with the math filters. Values must be
plain data (mappings, sequences, strings, numbers, booleans, None): Liquid reads items, never
attributes.
A value wrapped in markupsafe.Markup is trusted HTML and is not escaped.

MJML limitations (refused at compile with the line): Liquid markup inside a tag between
attributes of an mj-* element (`<mj-text {% if x %}...>`) is dropped by MJML; Liquid outside
`<mjml>` is kept only before and after it; Liquid inside `<mj-attributes>` and other places
where MJML allows no comment is an MJML syntax error.
"""

from __future__ import annotations

import bisect
import decimal
import html as html_lib
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from html.parser import HTMLParser
from io import StringIO
from typing import ClassVar, Final, Literal, TextIO

import css_inline
import mjml
from liquid import Environment, Mode, RenderContext, Undefined, escape
from liquid.builtin import content as liquid_content
from liquid.builtin.expressions import FilteredExpression, Path
from liquid.builtin.output import Output, OutputNode
from liquid.context import builtin as liquid_builtins
from liquid.exceptions import LiquidError, OutputStreamLimitError
from liquid.expression import Expression
from liquid.stringify import to_liquid_string
from liquid.template import BoundTemplate
from liquid.token import Token
from liquid.undefined import UNDEFINED, FalsyStrictUndefined
from liquid.utils import ReadOnlyChainMap

BodyFormat = Literal["mjml", "html"]
BODY_FORMATS: Final = ("mjml", "html")

LOOP_ITERATION_LIMIT: Final = 10_000           # iterations per render, nested loops multiply
OUTPUT_STREAM_LIMIT: Final = 1_000_000         # characters written by one render (Gmail clips at 102 KB)
CONTEXT_DEPTH_LIMIT: Final = 30                # nested scopes (loops, captures)
LOCAL_NAMESPACE_LIMIT: Final = 1_000_000       # "bytes" (sys.getsizeof) of assign/capture values
MAX_SOURCE_CHARS: Final = 1_000_000            # a template field larger than this is refused


class Amount(str):
    """A money amount as the store wrote it ("82.00"): prints as that text, compares as a
    number in Liquid (`__liquid__` is python-liquid's hook for comparisons and truthiness)."""

    __slots__ = ()

    def __new__(cls, value: str | int | decimal.Decimal) -> Amount:
        text = str(value).strip()
        try:
            number = decimal.Decimal(text)
        except decimal.InvalidOperation:
            raise ValueError(f"not an amount: {text!r}") from None
        if not number.is_finite():
            raise ValueError(f"not an amount: {text!r}")
        return super().__new__(cls, text)

    def __liquid__(self) -> decimal.Decimal:
        return decimal.Decimal(self)


# -- the template source model ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class EmailTemplateSource:
    """One language variant of an email template as the seller wrote it."""

    subject: str
    body: str
    body_format: BodyFormat
    text: str | None = None         # None: derived from the HTML
    preheader: str | None = None    # the inbox preview line, hidden in the body


@dataclass(frozen=True, slots=True)
class TemplateVariants:
    """Language variants of one template, keyed by language tag ("en", "pt-BR")."""

    default_language: str
    variants: Mapping[str, EmailTemplateSource]

    def __post_init__(self) -> None:
        if self.default_language not in self.variants:
            raise ValueError(f"default language {self.default_language!r} has no variant")


def _language_key(tag: str) -> str:
    return tag.strip().replace("_", "-").lower()


def choose_variant(variants: TemplateVariants, language: str | None) -> tuple[str, EmailTemplateSource]:
    """The variant for a recipient's language: the exact tag, then its base language
    ("pt-BR" -> "pt"), then another variant of the same base language ("pt" -> "pt-BR", the
    first in tag order), then the default. Tags compare case-insensitively."""
    if language:
        by_key = {_language_key(tag): tag for tag in variants.variants}
        wanted = _language_key(language)
        base = wanted.split("-", 1)[0]
        tag = by_key.get(wanted) or by_key.get(base)
        if tag is None:
            tag = next((by_key[key] for key in sorted(by_key) if key.split("-", 1)[0] == base), None)
        if tag is not None:
            return tag, variants.variants[tag]
    return variants.default_language, variants.variants[variants.default_language]


# -- errors -------------------------------------------------------------------------------------

class TemplateError(ValueError):
    """A template that cannot be saved: which field ("subject", "body", "text", "preheader"),
    the 1-based line in that field when known, and why."""

    def __init__(self, field: str, line: int | None, message: str) -> None:
        super().__init__(field, line, message)
        self.field = field
        self.line = line
        self.message = message

    def __str__(self) -> str:
        where = f"{self.field} line {self.line}" if self.line is not None else self.field
        return f"{where}: {self.message}"


class RenderError(Exception):
    """One recipient's render failed (a limit was hit, a value broke a filter, or an undefined
    variable in strict mode). The message fails permanently; the batch goes on."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(field, message)
        self.field = field
        self.message = message

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


# -- the Liquid environments ----------------------------------------------------------------------

class _Scope(ReadOnlyChainMap):
    """python-liquid's scope chain, looked up with `in` instead of catching KeyError from each
    namespace in front of the one that has the name (a loop pushes two)."""

    def __getitem__(self, key: str) -> object:
        for namespace in self._maps:
            if key in namespace:
                return namespace[key]
        raise KeyError(key)


_SPECIAL_PROPERTIES: Final = frozenset({"size", "first", "last"})


class _FastContext(RenderContext):
    """RenderContext with a fast path for the common lookup, `a.b.c` through plain dicts; any
    other path (lists, indexes, size/first/last, a missing key, Mapping types) is resolved again
    by python-liquid itself, so the results are the library's."""

    __slots__ = ()

    def __init__(self, template: BoundTemplate, **kwargs: object) -> None:
        super().__init__(template, **kwargs)  # type: ignore[arg-type]
        self.scope = _Scope(self.locals, self.globals, liquid_builtins, self.counters)

    def get(self, path: list[object], *, token: Token | None, default: object = UNDEFINED) -> object:
        root = path[0]
        if type(root) is str:
            obj: object = _MISSING
            for namespace in self.scope._maps:
                if root in namespace:
                    obj = namespace[root]
                    break
            for segment in path[1:]:
                if type(obj) is not dict or type(segment) is not str or segment in _SPECIAL_PROPERTIES \
                        or segment not in obj:
                    obj = _MISSING
                    break
                obj = obj[segment]
            if obj is not _MISSING:
                return obj
        return super().get(path, token=token, default=default)


_MISSING: Final = object()


class _FastOutputNode(OutputNode):
    """`{{ a.b.c }}` without filters rendered in one call: the library's chain (Node.render ->
    render_to_output -> FilteredExpression.evaluate -> Path.evaluate -> context.get) costs five
    Python calls per output statement, most of a render. Same lookup as _FastContext.get (a
    miss goes to the library), same stringification; any other expression takes the library's
    path. An output statement is never a disabled tag (Node.render checks only tags)."""

    __slots__ = ("_path", "_path_token")

    def __init__(self, token: Token, expression: Expression) -> None:
        super().__init__(token, expression)
        self._path: tuple[str, ...] | None = None
        self._path_token: Token | None = None
        if isinstance(expression, FilteredExpression) and not expression.filters \
                and isinstance(expression.left, Path) and all(type(s) is str for s in expression.left.path):
            self._path = tuple(expression.left.path)   # type: ignore[arg-type]
            self._path_token = expression.left.token

    def render(self, context: RenderContext, buffer: TextIO) -> int:
        path = self._path
        if path is None:
            return self.render_to_output(context, buffer)
        obj: object = _MISSING
        for namespace in context.scope._maps:
            if path[0] in namespace:
                obj = namespace[path[0]]
                break
        for segment in path[1:]:
            if type(obj) is not dict or segment in _SPECIAL_PROPERTIES or segment not in obj:
                obj = _MISSING
                break
            obj = obj[segment]
        if obj is _MISSING:
            obj = context.get(list(path), token=self._path_token)
        if type(obj) is str:   # to_liquid_string's first case
            text: str = escape(obj) if context.autoescape else obj
        else:
            text = to_liquid_string(obj, context.autoescape)
        if type(buffer) is not _CappedBuffer:   # a capture's or a blank block's buffer
            return buffer.write(text)
        buffer._left -= len(text)   # _CappedBuffer.write, inlined: a call per write is a good part of a render
        if buffer._left < 0:
            raise OutputStreamLimitError("output stream limit reached", token=None)
        return _stringio_write(buffer, text)


class _FastOutput(Output):
    node_class = _FastOutputNode


class _FastContentNode(liquid_content.ContentNode):
    """Template text written without Node.render's indirection (content is never a tag)."""

    __slots__ = ()

    def render(self, context: RenderContext, buffer: TextIO) -> int:
        text = self.text
        if type(buffer) is not _CappedBuffer:
            return buffer.write(text)
        buffer._left -= len(text)   # as in _FastOutputNode.render
        if buffer._left < 0:
            raise OutputStreamLimitError("output stream limit reached", token=None)
        return _stringio_write(buffer, text)


class _FastLiteral(liquid_content.Literal):
    node_class = _FastContentNode


class _CappedBuffer(StringIO):
    """The output buffer with the output limit counted in characters (python-liquid encodes
    every write to count bytes)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self._left = limit

    def write(self, text: str) -> int:
        self._left -= len(text)
        if self._left < 0:
            raise OutputStreamLimitError("output stream limit reached", token=None)
        return _stringio_write(self, text)


_stringio_write: Final = StringIO.write


class _Template(BoundTemplate):
    context_class = _FastContext

    def _get_buffer(self) -> StringIO:
        return _CappedBuffer(OUTPUT_STREAM_LIMIT)

    def make_globals(self, render_args: Mapping[str, object]) -> Mapping[str, object]:
        """The render arguments alone when there are no template or environment globals (ours
        have none): a dict is looked up with one hash, the library's chain of three mappings
        with an abc `__contains__` and a try/except per mapping."""
        if not self.matter and not self.globals and type(render_args) is dict:
            return render_args   # the fresh dict render() made from its arguments
        return super().make_globals(render_args)


class _SandboxedEnvironment(Environment):
    loop_iteration_limit: ClassVar[int | None] = LOOP_ITERATION_LIMIT
    output_stream_limit: ClassVar[int | None] = None    # enforced by _CappedBuffer
    context_depth_limit: ClassVar[int] = CONTEXT_DEPTH_LIMIT
    local_namespace_limit: ClassVar[int | None] = LOCAL_NAMESPACE_LIMIT
    template_class = _Template


class _PreviewUndefined(FalsyStrictUndefined):
    """Strict about printing and iterating; `{% if %}` and `| default` still work."""

    force_liquid_default = True


def _environment(*, autoescape: bool, strict: bool) -> Environment:
    env = _SandboxedEnvironment(
        tolerance=Mode.STRICT,          # syntax and render errors raise (they are never ignored)
        undefined=_PreviewUndefined if strict else Undefined,
        strict_filters=True,
        autoescape=autoescape,
    )
    for tag in ("include", "render"):   # no template loader: partials are not a feature
        del env.tags[tag]
    env.add_tag(_FastLiteral)
    env.add_tag(_FastOutput)
    return env


_ENVIRONMENTS: Final = {
    (autoescape, strict): _environment(autoescape=autoescape, strict=strict)
    for autoescape in (False, True) for strict in (False, True)
}


def _env(*, html: bool, strict: bool = False) -> Environment:
    return _ENVIRONMENTS[(html, strict)]


# -- compiled and rendered emails -----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class CompiledEmail:
    """A template variant ready to render. The *_source fields are Liquid over the final HTML
    and text (what the templates were parsed from; the lead may cache them)."""

    subject_source: str
    html_source: str
    text_source: str | None          # None: the text part is converted from each rendered HTML
    text_derived: bool               # text_source was generated from html_source
    referenced: frozenset[str]       # variables the template reads, e.g. "order.name", "unsubscribe_url"
    subject_template: BoundTemplate
    html_template: BoundTemplate
    text_template: BoundTemplate | None


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    subject: str     # one line
    html: str
    text: str


def compile_email(source: EmailTemplateSource) -> CompiledEmail:
    """Validate and compile a template variant; raises TemplateError with field, line and reason."""
    _check_source(source)
    subject = _parse("subject", source.subject, html=False)
    body = _parse("body", source.body, html=True)
    preheader = _parse("preheader", source.preheader, html=False) if source.preheader else None
    text = _parse("text", source.text, html=False) if source.text is not None else None

    html_source = _compile_body(source.body, source.body_format)
    if source.preheader:
        html_source = _insert_preheader(html_source, source.preheader)
    html_template = _parse_compiled(html_source)

    text_source, text_derived = source.text, False
    if text is None:
        text_source, text, text_derived = _derived_text(html_source)
    parts = [subject, body, *(t for t in (preheader, text) if t is not None)]
    return CompiledEmail(
        subject_source=source.subject, html_source=html_source, text_source=text_source,
        text_derived=text_derived, referenced=_referenced(parts), subject_template=subject,
        html_template=html_template, text_template=text,
    )


def render_email(compiled: CompiledEmail, variables: Mapping[str, object], *, strict: bool = False) -> RenderedEmail:
    """Render one recipient's email; raises RenderError (never anything else for bad content)."""
    subject_t, html_t, text_t = compiled.subject_template, compiled.html_template, compiled.text_template
    if strict:
        subject_t, html_t, text_t = _strict_templates(compiled)
    subject = _render("subject", subject_t, variables)
    html = _render("body", html_t, variables)
    if text_t is None:
        text = html_to_text(html)
    else:
        text = _render("text", text_t, variables)
        if compiled.text_derived:
            text = _tidy_derived_text(text)
    return RenderedEmail(" ".join(subject.split()), html, text)


def _strict_templates(compiled: CompiledEmail) -> tuple[BoundTemplate, BoundTemplate, BoundTemplate | None]:
    strict_text = _env(html=False, strict=True)
    text = None
    if compiled.text_template is not None and compiled.text_source is not None:
        text = strict_text.from_string(compiled.text_source)
    return (strict_text.from_string(compiled.subject_source),
            _env(html=True, strict=True).from_string(compiled.html_source), text)


def _render(field: str, template: BoundTemplate, variables: Mapping[str, object]) -> str:
    try:
        return template.render(variables)
    except LiquidError as err:
        raise RenderError(field, str(err.message)) from err
    except (TypeError, ValueError, ArithmeticError, RecursionError) as err:   # a value a filter could not take
        raise RenderError(field, f"{type(err).__name__}: {err}") from err


# -- plain-text channels: SMS, push, inbox, WhatsApp parameters --------------------------------------

@dataclass(frozen=True, slots=True)
class CompiledText:
    """Named Liquid fields of a text-channel template (e.g. {"body"}, {"title", "body", "url"},
    or WhatsApp's {"parameters.0", "parameters.1", ...}), compiled, not HTML-escaped."""

    fields: Mapping[str, BoundTemplate]
    referenced: frozenset[str]


def compile_text(sources: Mapping[str, str]) -> CompiledText:
    """Compile each field; raises TemplateError with the field, line and reason."""
    parsed: dict[str, BoundTemplate] = {}
    for field_name, source in sources.items():
        if len(source) > MAX_SOURCE_CHARS:
            raise TemplateError(field_name, None, f"is longer than {MAX_SOURCE_CHARS} characters")
        parsed[field_name] = _parse(field_name, source, html=False)
    return CompiledText(parsed, _referenced(list(parsed.values())))


def render_text(compiled: CompiledText, variables: Mapping[str, object]) -> dict[str, str]:
    """Render every field for one recipient (whitespace at the ends trimmed); raises RenderError."""
    return {name: _render(name, template, variables).strip() for name, template in compiled.fields.items()}


# -- validation ---------------------------------------------------------------------------------

def _check_source(source: EmailTemplateSource) -> None:
    if source.body_format not in BODY_FORMATS:
        raise TemplateError("body_format", None, f"must be one of {', '.join(BODY_FORMATS)}")
    if not source.subject.strip():
        raise TemplateError("subject", None, "is empty")
    if not source.body.strip():
        raise TemplateError("body", None, "is empty")
    fields = (("subject", source.subject), ("body", source.body), ("text", source.text or ""),
              ("preheader", source.preheader or ""))
    for field, value in fields:
        if len(value) > MAX_SOURCE_CHARS:
            raise TemplateError(field, None, f"is longer than {MAX_SOURCE_CHARS} characters")


def _line_at(source: str, index: int) -> int:
    return source.count("\n", 0, max(index, 0)) + 1


def _parse(field: str, source: str, *, html: bool) -> BoundTemplate:
    """Parse the seller's own text, so errors point at the seller's lines; unknown filters are
    refused here rather than at the first send."""
    env = _env(html=html)
    try:
        template = env.from_string(source)
    except LiquidError as err:
        line = _error_line(err) or _locate_syntax_error(env, source)
        raise TemplateError(field, line, str(err.message)) from None
    _check_filters(field, env, template, source)
    return template


def _error_line(err: LiquidError) -> int | None:
    try:
        context = err.context()
    except ValueError:      # a position just past the end of the source
        return None
    return context[0] if context else None


def _check_filters(field: str, env: Environment, template: BoundTemplate, source: str) -> None:
    unknown = [(span.index, name) for name, spans in template.analyze(include_partials=False).filters.items()
               if name not in env.filters for span in spans]
    if unknown:
        index, name = min(unknown)
        raise TemplateError(field, _line_at(source, index), f"unknown filter '{name}'")


_OUTPUT_STATEMENT = re.compile(r"{{.*?}}", re.DOTALL)


def _locate_syntax_error(env: Environment, source: str) -> int | None:
    """python-liquid reports some errors without a position ("expected tag endif, found end of
    expression"): find the unbalanced tag, else the first output statement that fails alone."""
    tags = env.analyze_tags_from_string(source)
    for found in (tags.unknown_tags, tags.unexpected_tags):
        if found:
            return _line_at(source, min(span.index for spans in found.values() for span in spans))
    if tags.unclosed_tags:
        return _line_at(source, max(span.index for spans in tags.unclosed_tags.values() for span in spans))
    for match in _OUTPUT_STATEMENT.finditer(source):
        try:
            env.from_string(match.group())
        except LiquidError:
            return _line_at(source, match.start())
    return None


def _parse_compiled(html_source: str) -> BoundTemplate:
    try:
        return _env(html=True).from_string(html_source)
    except LiquidError as err:   # the seller's body parsed; only our processing can cause this
        raise TemplateError("body", None, f"the Liquid markup did not survive HTML processing: {err.message}") from None


def _referenced(templates: list[BoundTemplate]) -> frozenset[str]:
    names: set[str] = set()
    for template in templates:
        for variables in template.analyze(include_partials=False).globals.values():
            names.update(str(variable) for variable in variables)
    return frozenset(names)


# -- Liquid markup through MJML and the CSS inliner ---------------------------------------------------

# One Liquid markup: a raw or comment block as a whole, an output statement or a tag.
_LIQUID_MARKUP = re.compile(
    r"{%-?\s*(raw|comment)\s*-?%}.*?{%-?\s*end\1\s*-?%}|{{.*?}}|{%.*?%}", re.DOTALL)
# Elements whose content is not HTML: markup inside them must stay plain words.
_RAW_TEXT_ELEMENTS = frozenset({"style", "script", "title", "textarea", "xmp", "mj-title", "mj-preview", "mj-style"})

Placement = Literal["comment", "word", "attribute"]


@dataclass(frozen=True, slots=True)
class _Markup:
    source: str          # the Liquid text as written
    offset: int          # where it starts in the seller's body
    placement: Placement   # comment: <!--ph--> in text; word: ph; attribute: ph between attributes
    ordered: bool        # must come out in source order


@dataclass(frozen=True, slots=True)
class _Protected:
    """A body with every Liquid markup replaced by a placeholder made of lower-case letters and
    digits (HTML parsers lower-case attribute names), numbered in source order."""

    text: str
    nonce: str
    markups: tuple[_Markup, ...]
    text_starts: tuple[int, ...]      # offset map: a piece starting here in `text` ...
    source_starts: tuple[int, ...]    # ... starts here in the seller's body
    prefix: str                       # Liquid markup before the document, kept out of MJML
    suffix: str

    def source_offset(self, text_offset: int) -> int:
        piece = max(bisect.bisect_right(self.text_starts, text_offset) - 1, 0)
        return self.source_starts[piece] + max(text_offset - self.text_starts[piece], 0)


def _compile_body(body: str, body_format: BodyFormat) -> str:
    protected = _protect(body)
    document = protected.text
    if body_format == "mjml":
        _refuse_markup_between_mjml_attributes(protected, body)
        document = _mjml_to_html(document, protected, body)
    try:
        document = _CSS_INLINER.inline(document)
    except ValueError as err:   # css_inline.InlineError
        raise TemplateError("body", None, f"CSS: {err}") from None
    # The serialiser writes &#123;&#123; as "{{": literal braces must not turn into Liquid.
    document = _LITERAL_BRACE.sub("&#123;", document)
    return protected.prefix + _restore(document, protected, body) + protected.suffix


_LITERAL_BRACE = re.compile(r"{(?=[{%])")


def _refuse_markup_between_mjml_attributes(protected: _Protected, body: str) -> None:
    """MJML's parser takes attributes only as name="value"; say so instead of its "unable to
    parse next template" without a position."""
    for markup in protected.markups:
        if markup.placement == "attribute":
            raise _placement_error(body, markup, "cannot stand between attributes in MJML: put it inside an "
                                   "attribute value, e.g. align=\"{% if x %}center{% else %}left{% endif %}\"")


# No network at compile: <link> stylesheets are kept for the clients that load them, never fetched.
_CSS_INLINER: Final = css_inline.CSSInliner(keep_at_rules=True, keep_link_tags=True, load_remote_stylesheets=False)


def _new_nonce(source: str) -> str:
    lowered = source.lower()
    for _ in range(100):
        nonce = "hlq" + secrets.token_hex(4)
        if nonce not in lowered:
            return nonce
    raise TemplateError("body", None, "could not compile this template")   # pragma: no cover


def _protect(body: str) -> _Protected:
    matches = list(_LIQUID_MARKUP.finditer(body))
    nonce = _new_nonce(body)
    lead, trail = _outer_markup_count(body, matches)
    inner = matches[lead:len(matches) - trail]
    prefix = "".join(m.group() for m in matches[:lead])
    suffix = "".join(m.group() for m in matches[len(inner) + lead:])
    start = matches[lead - 1].end() if lead else 0
    end = matches[lead + len(inner)].start() if trail else len(body)
    placements = _placements(body, nonce)[lead:lead + len(inner)]

    pieces: list[str] = []
    text_starts: list[int] = []
    source_starts: list[int] = []
    markups: list[_Markup] = []
    position, cursor = 0, start
    for index, (match, (placement, ordered)) in enumerate(zip(inner, placements, strict=True)):
        for piece, source_at in ((body[cursor:match.start()], cursor), (_placeholder(nonce, index, placement),
                                                                         match.start())):
            text_starts.append(position)
            source_starts.append(source_at)
            pieces.append(piece)
            position += len(piece)
        markups.append(_Markup(match.group(), match.start(), placement, ordered))
        cursor = match.end()
    text_starts.append(position)
    source_starts.append(cursor)
    pieces.append(body[cursor:end])
    return _Protected("".join(pieces), nonce, tuple(markups), tuple(text_starts), tuple(source_starts),
                      prefix, suffix)


def _outer_markup_count(body: str, matches: list[re.Match[str]]) -> tuple[int, int]:
    """How many silent tags lead and trail the document with only whitespace around them
    (`{% assign %}` before <mjml>, which MJML would drop)."""
    lead, cursor = 0, 0
    while lead < len(matches) and _is_silent_tag(matches[lead].group()) \
            and not body[cursor:matches[lead].start()].strip():
        cursor = matches[lead].end()
        lead += 1
    if lead == len(matches):
        return 0, 0              # no document between them: nothing to keep out
    trail, cursor = 0, len(body)
    while trail < len(matches) - lead and _is_silent_tag(matches[-1 - trail].group()) \
            and not body[matches[-1 - trail].end():cursor].strip():
        cursor = matches[-1 - trail].start()
        trail += 1
    return lead, trail


def _placeholder(nonce: str, index: int, placement: Placement) -> str:
    word = f"{nonce}x{index}y"
    return f"<!--{word}-->" if placement == "comment" else word


_HTML_STATE_TOKEN = re.compile(r"<!--|-->|</?[A-Za-z][A-Za-z0-9:-]*|>|[\"']")


def _placements(body: str, nonce: str) -> list[tuple[Placement, bool]]:
    """Where each markup sits in the HTML: a silent tag in text (-> an HTML comment, which
    parsers keep in place, even between table rows), output in text, raw text or an HTML comment
    (-> a word), between attributes (-> an attribute name) or in an attribute value (-> a word)."""
    markups = iter([match.group() for match in _LIQUID_MARKUP.finditer(body)])
    skeleton = _LIQUID_MARKUP.sub(lambda m: f" {nonce}x ", body)   # Liquid's own < > " ' hidden
    found: list[tuple[Placement, bool]] = []
    state, quote, tag, closing = "text", "", "", False
    for token in re.finditer(_HTML_STATE_TOKEN.pattern + f"|{nonce}x", skeleton):
        value = token.group()
        if value == f"{nonce}x":
            found.append(_placement(state, next(markups), _follows_equals(skeleton, token.start())))
        elif state == "text" and value == "<!--":
            state = "comment"
        elif state == "text" and value[0] == "<" and len(value) > 1:
            state, tag, closing = "tag", value.lstrip("</").lower(), value.startswith("</")
        elif state == "comment" and value == "-->":
            state = "text"
        elif state == "raw" and value.lower() == f"</{tag}":
            state, closing = "tag", True
        elif state == "tag" and value in ("'", '"'):
            state, quote = "value", value
        elif state == "tag" and value == ">":
            self_closing = skeleton[token.start() - 1] == "/"
            state = "raw" if tag in _RAW_TEXT_ELEMENTS and not closing and not self_closing else "text"
        elif state == "value" and value == quote:
            state = "tag"
    return found


def _placement(state: str, markup: str, after_equals: bool) -> tuple[Placement, bool]:
    """Only markup in text must keep its order: MJML reorders attributes (mj-image writes href
    before src) and the inliner copies CSS values to other elements. Output in text stays text,
    so that it lands where a browser would put it (and is refused if that is not where it was)."""
    if state == "text":
        return ("comment" if _is_silent_tag(markup) else "word"), True
    if state == "tag" and not after_equals:
        return "attribute", False
    return "word", False


def _follows_equals(text: str, at: int) -> bool:
    at -= 1
    while at >= 0 and text[at].isspace():
        at -= 1
    return at >= 0 and text[at] == "="


def _mjml_to_html(document: str, protected: _Protected, body: str) -> str:
    try:
        return mjml.mjml2html(document)
    except ValueError as err:
        raise _mjml_error(str(err), document, protected, body) from None


_MJML_POSITION = re.compile(r"\s*at position (\d+):(\d+)")


def _mjml_error(message: str, document: str, protected: _Protected, body: str) -> TemplateError:
    """mrml says "unexpected token in root template at position 27:38" (byte offsets in what it
    was given): report the seller's line, and say so when the position is a Liquid markup."""
    position = _MJML_POSITION.search(message)
    if position is None:
        return TemplateError("body", None, f"MJML: {message}")
    byte_offset = int(position.group(1))
    text_offset = len(document.encode()[:byte_offset].decode("utf-8", "ignore"))
    reason = _MJML_POSITION.sub("", message)
    if protected.nonce in document[text_offset:text_offset + len(protected.nonce) + 8]:
        reason += " (MJML allows no Liquid markup here)"
    return TemplateError("body", _line_at(body, protected.source_offset(text_offset)), f"MJML: {reason}")


def _restore(document: str, protected: _Protected, body: str) -> str:
    """Put the Liquid markup back, checking that none was dropped and none was moved."""
    nonce, markups = protected.nonce, protected.markups
    pattern = re.compile(rf"<!--{nonce}x(\d+)y-->|{nonce}x(\d+)y(=\"\")?")
    seen: set[int] = set()
    order: list[int] = []
    misplaced: list[int] = []

    def put_back(match: re.Match[str]) -> str:
        as_comment = match.group(1) is not None
        index = int(match.group(1) if as_comment else match.group(2))
        markup = markups[index]
        if as_comment != (markup.placement == "comment"):
            misplaced.append(index)
        if index not in seen:
            seen.add(index)
            if markup.ordered:
                order.append(index)
        empty_value = match.group(3) or ""
        return markup.source + ("" if markup.placement == "attribute" else empty_value)

    restored = pattern.sub(put_back, document)
    missing = [index for index in range(len(markups)) if index not in seen]
    if missing:
        raise _placement_error(body, markups[missing[0]], "was dropped by the MJML/HTML processing: Liquid markup "
                               "belongs in text, in attribute values or between elements")
    moved = misplaced[0] if misplaced else _first_out_of_order(order)
    if moved is not None:
        raise _placement_error(body, markups[moved], "would be moved by HTML parsing (text directly inside a "
                               "table, outside any cell, is moved before the table): put it inside a cell")
    return restored


def _first_out_of_order(order: list[int]) -> int | None:
    for at in range(1, len(order)):
        if order[at] < order[at - 1]:
            moved_later = at == 1 or order[at] > order[at - 2]
            return order[at - 1] if moved_later else order[at]
    return None


def _placement_error(body: str, markup: _Markup, reason: str) -> TemplateError:
    shown = markup.source if len(markup.source) <= 60 else markup.source[:57] + "..."
    return TemplateError("body", _line_at(body, markup.offset), f"{shown!r} {reason}")


_PREHEADER_STYLE = ("display:none;font-size:1px;color:#ffffff;line-height:1px;max-height:0px;max-width:0px;"
                    "opacity:0;overflow:hidden;mso-hide:all;")
_BODY_OPEN = re.compile(r"<body\b[^>]*>", re.IGNORECASE)


def _insert_preheader(html_source: str, preheader: str) -> str:
    """The preheader as the first, hidden, element of the body; its literal text is escaped
    here, its Liquid output by autoescape."""
    parts: list[str] = []
    cursor = 0
    for match in _LIQUID_MARKUP.finditer(preheader):
        parts.append(html_lib.escape(preheader[cursor:match.start()], quote=False))
        parts.append(match.group())
        cursor = match.end()
    parts.append(html_lib.escape(preheader[cursor:], quote=False))
    hidden = f'<div style="{_PREHEADER_STYLE}">{"".join(parts)}</div>'
    body = _BODY_OPEN.search(html_source)
    at = body.end() if body else 0
    return html_source[:at] + hidden + html_source[at:]


# -- the plain-text part ----------------------------------------------------------------------------

_OUTPUT_TAGS = frozenset({"echo", "raw", "cycle", "increment", "decrement"})
_TAG_NAME = re.compile(r"{%-?\s*(\w+)")
_WHITESPACE_CONTROL = re.compile(r"^({[{%])-|-([%}]})$")


def _derived_text(html_source: str) -> tuple[str | None, BoundTemplate | None, bool]:
    """A Liquid template for the text part, made from the compiled HTML once. (None, None,
    False) when the conversion cannot keep the Liquid structure: then each rendered HTML is
    converted instead (correct, slower)."""
    source = _html_source_to_text_source(html_source)
    if source is None:
        return None, None, False
    try:
        return source, _env(html=False).from_string(source), True
    except LiquidError:
        return None, None, False


def _html_source_to_text_source(html_source: str) -> str | None:
    matches = list(_LIQUID_MARKUP.finditer(html_source))
    nonce = _new_nonce(html_source)
    words = iter(range(len(matches)))
    skeleton = _LIQUID_MARKUP.sub(lambda _m: f"{nonce}x{next(words)}y", html_source)
    text = html_to_text(skeleton)
    if "{{" in text or "{%" in text:   # literal braces (from entities) would become Liquid
        return None
    silent = {index for index, match in enumerate(matches) if _is_silent_tag(match.group())}
    text = _join_tag_only_lines(text, nonce, silent)

    def markup(match: re.Match[str]) -> str:   # our layout, not the HTML's whitespace control
        return _WHITESPACE_CONTROL.sub(r"\1\2", matches[int(match.group(1))].group())

    return re.sub(rf"{nonce}x(\d+)y", markup, text)


def _is_silent_tag(markup: str) -> bool:
    """A tag that writes nothing ({% if %}, {% for %}, {% assign %}, ...)."""
    name = _TAG_NAME.match(markup)
    return name is not None and name.group(1) not in _OUTPUT_TAGS


def _join_tag_only_lines(text: str, nonce: str, silent: set[int]) -> str:
    """A line holding only silent tags is joined to the next one, so a loop over table rows
    renders one line per row instead of a blank line between rows."""
    tag_only = re.compile(rf"(?:{nonce}x(\d+)y\s*)+")
    lines = text.split("\n")
    out: list[str] = []
    for number, line in enumerate(lines):
        is_tag_only = tag_only.fullmatch(line) is not None and all(
            int(i) in silent for i in re.findall(rf"{nonce}x(\d+)y", line))
        out.append(line.strip() if is_tag_only else line)
        if not (is_tag_only and number + 1 < len(lines)):
            out.append("\n")
    return "".join(out).rstrip("\n") + "\n"


_BLANK_LINES = re.compile(r"\n(?:[ \t]*\n){2,}")


def _tidy_derived_text(text: str) -> str:
    """Per recipient: empty loops and false conditions leave blank lines; keep one at most."""
    return _BLANK_LINES.sub("\n\n", text).strip() + "\n"


def html_to_text(html: str) -> str:
    """A readable plain-text version of an HTML email: paragraphs and headings separated by a
    blank line, line breaks kept, list items as "- ", table cells side by side, links as
    "label (url)", hidden elements, <head>, <style> and <script> dropped."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    return parser.result()


_SPACES = re.compile(r"[ \t\r\n\f\v\u00a0]+")
_PARAGRAPHS = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "hr", "dl", "table", "ul",
                        "ol"})
_BLOCKS = frozenset({"div", "tr", "li", "section", "article", "header", "footer", "center",
                     "address", "figure", "dt", "dd", "tbody", "thead", "tfoot", "main", "nav", "aside"})
_SKIPPED = frozenset({"head", "style", "script", "title", "template", "noscript", "xml"})
_VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track",
                   "wbr"})


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._out: list[str] = []
        self._pending_newlines = 0
        self._at_line_start = True
        self._cell_gap = False
        self._skip_tag: str | None = None
        self._skip_depth = 0
        self._pre = 0
        self._lists: list[int | None] = []          # None: bullets; n: next number
        self._links: list[_OpenLink] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skipping(tag, opening=True):
            return
        attributes = {name: value or "" for name, value in attrs}
        if tag in _SKIPPED or _is_hidden(attributes.get("style", "")):
            if tag not in _VOID:
                self._skip_tag, self._skip_depth = tag, 1
            return
        self._open(tag, attributes)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if self._skipping(tag, opening=False):
            return
        if tag == "a" and self._links:
            self._close_link()
        elif tag in ("ul", "ol") and self._lists:
            self._lists.pop()
        elif tag == "pre":
            self._pre = max(self._pre - 1, 0)
        self._block_break(tag)

    def handle_data(self, data: str) -> None:
        if self._skip_tag is None:
            self._write(data if self._pre else _SPACES.sub(" ", data))

    def result(self) -> str:
        text = "".join(self._out)
        lines = [line.rstrip() for line in text.split("\n")]
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n") + "\n"

    def _skipping(self, tag: str, *, opening: bool) -> bool:
        if self._skip_tag is None:
            return False
        if tag == self._skip_tag:
            self._skip_depth += 1 if opening else -1
            if self._skip_depth == 0:
                self._skip_tag = None
        return True

    def _open(self, tag: str, attributes: dict[str, str]) -> None:
        if tag == "br":
            self._flush_newlines()
            self._out.append("\n")
            self._at_line_start, self._cell_gap = True, False
        elif tag in ("td", "th"):
            self._cell_gap = not (self._at_line_start or self._pending_newlines)
        elif tag == "a":
            self._links.append(_OpenLink(len(self._out), attributes.get("href", ""), self._pending_newlines,
                                         self._at_line_start, self._cell_gap))
        elif tag == "img" and self._links and attributes.get("alt") and not self._links[-1].alt:
            self._links[-1].alt = attributes["alt"]
        elif tag in ("ul", "ol"):
            self._lists.append(None if tag == "ul" else 1)
        elif tag == "pre":
            self._pre += 1
        self._block_break(tag)
        if tag == "li":
            self._write(self._list_marker())

    def _list_marker(self) -> str:
        if not self._lists or self._lists[-1] is None:
            return "- "
        number = self._lists[-1]
        self._lists[-1] = number + 1
        return f"{number}. "

    def _block_break(self, tag: str) -> None:
        if tag in _PARAGRAPHS:
            self._need_newlines(2)
        elif tag in _BLOCKS:
            self._need_newlines(1)

    def _need_newlines(self, count: int) -> None:
        if self._out:
            self._pending_newlines = max(self._pending_newlines, count)
        self._cell_gap = False

    def _flush_newlines(self) -> None:
        if self._pending_newlines:
            self._out.append("\n" * self._pending_newlines)
            self._pending_newlines = 0
            self._at_line_start = True

    def _write(self, text: str) -> None:
        if self._at_line_start or self._pending_newlines:
            text = text.lstrip(" ")
        elif text.startswith(" ") and self._out and self._out[-1].endswith(" "):
            text = text[1:]
        if not text:
            return
        self._flush_newlines()
        if self._cell_gap:
            self._out.append("  ")
            self._cell_gap = False
        self._out.append(text)
        self._at_line_start = text.endswith("\n")

    def _close_link(self) -> None:
        """Replace what the link wrote with "label (url)", in the layout state it opened in."""
        link = self._links.pop()
        label = "".join(self._out[link.start:]).strip() or link.alt
        del self._out[link.start:]
        self._pending_newlines, self._at_line_start, self._cell_gap = link.newlines, link.line_start, link.cell_gap
        shown = _link_text(label, link.href.strip())
        if shown:
            self._write(shown)


@dataclass(slots=True)
class _OpenLink:
    start: int              # index in _out where its label begins
    href: str
    newlines: int           # the layout state when it opened
    line_start: bool
    cell_gap: bool
    alt: str = ""           # an image's alt text: the label of an image-only link


def _is_hidden(style: str) -> bool:
    return "display:none" in style.replace(" ", "").lower()


def _link_text(label: str, href: str) -> str:
    lowered = href.lower()
    if not href or href.startswith("#") or lowered.startswith(("javascript:", "data:")):
        return label
    shown = href[len("mailto:"):] if lowered.startswith("mailto:") else href
    bare = shown.split("://", 1)[-1].rstrip("/")
    if not label or label in (href, shown) or label.rstrip("/") == bare:
        return shown
    return f"{label} ({shown})"


# -- sample data for previews -------------------------------------------------------------------------

_SAMPLE_LINES: Final = [
    {"title": "Linen shirt, sand, M", "quantity": 1, "price": Amount("39.00"), "total": Amount("39.00"),
     "sku": "LS-SAND-M", "image": "https://shop.example.com/images/linen-shirt-sand.jpg"},
    {"title": "Organic cotton socks (3 pairs)", "quantity": 2, "price": Amount("12.50"), "total": Amount("25.00"),
     "sku": "SOCK-3", "image": "https://shop.example.com/images/socks.jpg"},
    {"title": "Canvas tote bag", "quantity": 1, "price": Amount("18.00"), "total": Amount("18.00"),
     "sku": "TOTE-NAT", "image": "https://shop.example.com/images/tote.jpg"},
]

SAMPLE_VARIABLES: Final[Mapping[str, object]] = {
    "contact": {
        "first_name": "Ana", "last_name": "Souza", "email": "ana.souza@example.com", "country": "PT",
        "language": "pt-PT", "tags": ["vip", "newsletter"], "orders_count": 4,
        "attributes": {"loyalty_tier": "gold", "birthday": "1990-04-12"},
    },
    "store": {
        "name": "Maré Goods", "url": "https://shop.example.com",
        "address": "Maré Goods Lda, Rua das Flores 12, 1200-195 Lisboa, Portugal",
    },
    "order": {
        "name": "#1001", "total": Amount("82.00"), "subtotal": Amount("82.00"), "currency": "EUR",
        "lines": _SAMPLE_LINES, "discount_codes": ["WELCOME10"],
        "status_url": "https://shop.example.com/orders/1001/status", "shipping_country": "PT",
        "shipping_address": {"name": "Ana Souza", "address1": "Rua do Ouro 88", "address2": "3º Esq.",
                             "city": "Lisboa", "zip": "1100-061", "province": "Lisboa", "country": "PT"},
        "tracking": {"company": "CTT", "number": "RR123456785PT",
                     "url": "https://www.ctt.pt/feapl_2/app/open/objectSearch/objectSearch.jspx?objects=RR123456785PT"},
    },
    "checkout": {
        "recovery_url": "https://shop.example.com/checkouts/c/8f2a1c/recover", "lines": _SAMPLE_LINES[:2],
        "total": Amount("64.00"),
    },
    "unsubscribe_url": "https://herald.example.com/t/u/sample",
    "preferences_url": "https://herald.example.com/p/sample",
}
