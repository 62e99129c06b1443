"""The render stage: compile once (MJML, CSS inlining, Liquid checks), render per recipient."""

from __future__ import annotations

import copy
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from liquid.template import BoundTemplate
from markupsafe import Markup

from herald.pipeline.render import (
    SAMPLE_VARIABLES,
    Amount,
    EmailTemplateSource,
    RenderError,
    TemplateError,
    TemplateVariants,
    choose_variant,
    compile_email,
    html_to_text,
    render_email,
)

ORDER_CONFIRMATION = """\
<mjml>
  <mj-head>
    <mj-title>Order {{ order.name }}</mj-title>
    <mj-attributes>
      <mj-text font-size="15px" line-height="22px" color="#333333" />
    </mj-attributes>
    <mj-style inline="inline">.muted { color: #888888; } .price { font-weight: bold; }</mj-style>
  </mj-head>
  <mj-body background-color="#f4f4f4">
    <mj-section background-color="#ffffff">
      <mj-column>
        <mj-image src="{{ store.url }}/logo.png" alt="{{ store.name }}" width="120px" href="{{ store.url }}" />
        <mj-text font-size="22px">Thank you, {{ contact.first_name | default: "friend" }}!</mj-text>
        <mj-text>
          <p>Your order <strong>{{ order.name }}</strong> is confirmed{% if order.total > 50 %} and ships
          free{% endif %}.</p>
        </mj-text>
      </mj-column>
    </mj-section>
    <mj-section background-color="#ffffff">
      <mj-column>
        <mj-table>
          <tr><th>Item</th><th>Qty</th><th>Price</th></tr>
          {% for line in order.lines %}
          <tr>
            <td><img src="{{ line.image }}" width="48" alt="" /> {{ line.title }}</td>
            <td>{{ line.quantity }}</td>
            <td class="price">{{ line.price }} {{ order.currency }}</td>
          </tr>
          {% endfor %}
        </mj-table>
      </mj-column>
    </mj-section>
    <mj-section background-color="#ffffff">
      <mj-column>
        {% for line in order.lines %}
        <mj-text css-class="line">
          {{ forloop.index }}. {{ line.title }} <span class="muted">x {{ line.quantity }}</span>
        </mj-text>
        {% endfor %}
        {% if order.discount_codes.size > 0 %}
        <mj-text css-class="muted">Discount: {{ order.discount_codes | join: ", " }}</mj-text>
        {% endif %}
        <mj-text font-size="18px">Total: <strong>{{ order.total }} {{ order.currency }}</strong></mj-text>
        <mj-button href="{{ store.url }}/account/orders?order={{ order.name | url_encode }}&amp;utm_source=email">
          View your order
        </mj-button>
      </mj-column>
    </mj-section>
    <mj-section>
      <mj-column>
        <mj-text font-size="12px" align="center">
          {{ store.name }} &middot; {{ store.address }}<br />
          <a href="{{ store.url }}/pages/contact">Contact us</a> &middot;
          <a href="{{ unsubscribe_url }}">Unsubscribe</a>
        </mj-text>
      </mj-column>
    </mj-section>
  </mj-body>
</mjml>
"""


def order_source(**changes: Any) -> EmailTemplateSource:
    fields: dict[str, Any] = {"subject": "Order {{ order.name }} confirmed", "body": ORDER_CONFIRMATION,
                              "body_format": "mjml", "preheader": "Thanks {{ contact.first_name }} & see you soon"}
    fields.update(changes)
    return EmailTemplateSource(**fields)


def variables(**contact: object) -> dict[str, Any]:
    data: dict[str, Any] = copy.deepcopy(dict(SAMPLE_VARIABLES))
    data["contact"].update(contact)
    return data


def html_source(body: str, body_format: str = "html") -> EmailTemplateSource:
    return EmailTemplateSource(subject="s", body=body, body_format=body_format)  # type: ignore[arg-type]


def mjml(column: str, head: str = "") -> str:
    return (f"<mjml><mj-head>{head}</mj-head><mj-body><mj-section><mj-column>\n{column}\n"
            "</mj-column></mj-section></mj-body></mjml>")


def refused(source: EmailTemplateSource) -> TemplateError:
    with pytest.raises(TemplateError) as caught:
        compile_email(source)
    return caught.value


# -- the order confirmation, end to end -------------------------------------------------------------

def test_mjml_order_confirmation_renders_loops_and_values() -> None:
    rendered = render_email(compile_email(order_source()), variables())

    assert rendered.subject == "Order #1001 confirmed"
    assert "{{" not in rendered.html and "{%" not in rendered.html
    assert rendered.html.lstrip().lower().startswith("<!doctype html>")
    for line in SAMPLE_VARIABLES["order"]["lines"]:  # type: ignore[index]
        assert rendered.html.count(line["title"]) == 2           # the table and the text list
        assert f'src="{line["image"]}"' in rendered.html
    assert "1. Linen shirt, sand, M" in rendered.html and "3. Canvas tote bag" in rendered.html
    assert re.search(r"and ships\s+free", rendered.html)            # {% if order.total > 50 %}
    assert "Discount: WELCOME10" in rendered.html
    assert "Total: <strong>82.00 EUR</strong>" in rendered.html
    assert 'href="https://shop.example.com/account/orders?order=%231001&amp;utm_source=email"' in rendered.html
    assert 'href="https://herald.example.com/t/u/sample"' in rendered.html
    assert "<title>Order #1001</title>" in rendered.html


def test_css_is_inlined_once_at_compile() -> None:
    compiled = compile_email(order_source())
    assert re.search(r'<td class="price" style="[^"]*font-weight: bold', compiled.html_source)
    assert ".price {" not in compiled.html_source


def test_liquid_markup_survives_mjml_in_text_attributes_and_between_elements() -> None:
    compiled = compile_email(order_source())
    for markup in ('{{ contact.first_name | default: "friend" }}', "{% if order.total > 50 %}",
                   'href="{{ store.url }}/pages/contact"', 'src="{{ store.url }}/logo.png"',
                   "{% for line in order.lines %}", "{{ order.name | url_encode }}&amp;utm_source=email"):
        assert markup in compiled.html_source
    rows = re.findall(r"<tr>.*?</tr>", compiled.html_source.split("{% for line in order.lines %}")[1])
    assert "{{ line.title }}" in rows[0], "the loop stays around the table row"


def test_empty_loops_and_false_conditions_render_nothing() -> None:
    data = variables()
    data["order"]["lines"] = []
    data["order"]["discount_codes"] = []
    data["order"]["total"] = Amount("20.00")
    rendered = render_email(compile_email(order_source()), data)
    assert "Linen shirt" not in rendered.html and "Discount:" not in rendered.html
    assert "ships" not in rendered.html
    assert "Linen" not in rendered.text and "\n\n\n" not in rendered.text


# -- escaping -------------------------------------------------------------------------------------

def test_buyer_values_are_escaped_in_html_not_in_subject_or_text() -> None:
    compiled = compile_email(order_source(subject="Hi {{ contact.first_name }}"))
    name = '<script>alert("x")</script>'
    rendered = render_email(compiled, variables(first_name=name))

    assert "<script>" not in rendered.html
    assert "Thank you, &lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;!" in rendered.html
    assert rendered.subject == f"Hi {name}"
    assert f"Thank you, {name}!" in rendered.text


def test_attribute_values_cannot_break_out() -> None:
    compiled = compile_email(html_source('<a href="{{ url }}">x</a>'))
    rendered = render_email(compiled, {"url": '" onmouseover="alert(1)'})
    assert 'href="&#34; onmouseover=&#34;alert(1)"' in rendered.html


def test_trusted_markup_is_not_escaped() -> None:
    compiled = compile_email(html_source("<div>{{ footer }}</div>"))
    assert "<div><b>Shop</b></div>" in render_email(compiled, {"footer": Markup("<b>Shop</b>")}).html


def test_the_subject_is_one_line() -> None:
    compiled = compile_email(EmailTemplateSource(subject="Hi {{ name }}", body="<p>x</p>", body_format="html"))
    assert render_email(compiled, {"name": "Ana\r\nBcc: victim@example.com"}).subject == \
        "Hi Ana Bcc: victim@example.com"


# -- language variants ---------------------------------------------------------------------------------

def test_choose_variant_falls_back_from_tag_to_base_language_to_default() -> None:
    def variant(subject: str) -> EmailTemplateSource:
        return EmailTemplateSource(subject=subject, body="<p>x</p>", body_format="html")

    variants = TemplateVariants("en", {"en": variant("en"), "pt": variant("pt"), "pt-BR": variant("pt-BR"),
                                       "es-MX": variant("es-MX")})
    assert choose_variant(variants, "pt-BR") == ("pt-BR", variants.variants["pt-BR"])
    assert choose_variant(variants, "pt_br")[0] == "pt-BR"
    assert choose_variant(variants, "pt-PT")[0] == "pt"
    assert choose_variant(variants, "PT")[0] == "pt"
    assert choose_variant(variants, "es")[0] == "es-MX"      # a regional variant beats the default
    assert choose_variant(variants, "de-DE")[0] == "en"
    assert choose_variant(variants, None)[0] == "en"
    assert choose_variant(variants, "")[0] == "en"
    with pytest.raises(ValueError, match="default language"):
        TemplateVariants("fr", {"en": variant("en")})


# -- limits and per-recipient errors -------------------------------------------------------------------

def test_loop_iteration_limit_is_a_render_error() -> None:
    compiled = compile_email(html_source("{% for a in items %}{% for b in items %}.{% endfor %}{% endfor %}"))
    assert render_email(compiled, {"items": list(range(100))}).html.count(".") == 10_000
    with pytest.raises(RenderError, match="loop iteration limit"):
        render_email(compiled, {"items": list(range(101))})


def test_output_limit_is_a_render_error() -> None:
    compiled = compile_email(html_source("<p>{% for i in items %}{{ big }}{% endfor %}</p>"))
    render_email(compiled, {"items": list(range(10)), "big": "x" * 50_000})
    with pytest.raises(RenderError, match="output stream limit"):
        render_email(compiled, {"items": list(range(30)), "big": "x" * 50_000})


def test_local_namespace_limit_is_a_render_error() -> None:
    compiled = compile_email(html_source(
        '{% assign s = "xxxxxxxxxxxxxxxx" %}{% for i in (1..30) %}{% assign s = s | append: s %}{% endfor %}'))
    with pytest.raises(RenderError, match="local namespace limit"):
        render_email(compiled, {})


def test_a_bad_value_fails_one_recipient_and_the_next_renders() -> None:
    compiled = compile_email(html_source("<p>{{ 10 | divided_by: n }}</p>"))
    with pytest.raises(RenderError) as caught:
        render_email(compiled, {"n": 0})
    assert str(caught.value).startswith("body: ")
    assert "<p>5</p>" in render_email(compiled, {"n": 2}).html


def test_undefined_variables_are_empty_unless_strict() -> None:
    compiled = compile_email(html_source(
        "<p>Hi {{ contact.nickname }}{% if order.gift %} gift{% endif %} {{ contact.x | default: 'there' }}</p>"))
    assert "<p>Hi  there</p>" in render_email(compiled, {"contact": {}}).html
    with pytest.raises(RenderError, match="nickname"):
        render_email(compiled, {"contact": {}}, strict=True)
    strict = render_email(compiled, {"contact": {"nickname": "Ana"}}, strict=True)
    assert "<p>Hi Ana there</p>" in strict.html


def test_include_and_render_tags_do_not_exist() -> None:
    assert "unexpected tag 'include'" in str(refused(html_source("<p>\n{% include 'secret' %}</p>")))
    assert refused(html_source("{% render 'x' %}")).message == "unexpected tag 'render'"


# -- broken templates are refused with the line ----------------------------------------------------------

@pytest.mark.parametrize(("body", "line", "reason"), [
    ("<p>a</p>\n<p>b</p>\n{% if x %}\n<p>c</p>\n", 3, "expected tag endif"),
    ("<p>a</p>\n\n{% endfor %}", 3, "unexpected tag 'endfor'"),
    ("<p>a</p>\n<p>{{ x | }}</p>", 2, "expected"),
    ("<p>a</p>\n<p>{{ x </p>", 2, "expected '}}'"),
    ("<p>\n{% bogus %}</p>", 2, "unexpected tag 'bogus'"),
    ("<p>a</p>\n\n\n<p>{{ order.total | money }}</p>", 4, "unknown filter 'money'"),
    ("{% for l in lines %}\n{% if l %}\n{% endfor %}", 3, "unexpected tag 'endfor'"),
])
def test_broken_liquid_is_refused_with_field_line_and_reason(body: str, line: int, reason: str) -> None:
    error = refused(html_source(body))
    assert (error.field, error.line) == ("body", line)
    assert reason in error.message
    assert str(error).startswith(f"body line {line}: ")


def test_the_line_counts_in_the_sellers_mjml_source() -> None:
    body = ORDER_CONFIRMATION.replace("{% endif %}.</p>", ".</p>")  # line 15 opens an if that never closes
    assert "{% if order.total > 50 %}" in body.splitlines()[14]
    error = refused(order_source(body=body))
    assert (error.field, error.line) == ("body", 15)


def test_errors_in_subject_text_and_preheader_name_their_field() -> None:
    assert str(refused(order_source(subject="Order {{ order.name "))).startswith("subject line 1: ")
    assert refused(order_source(text="Hi\n{% if x %}")).field == "text"
    assert refused(order_source(preheader="{{ a | nope }}")).field == "preheader"
    assert refused(order_source(subject="  ")).message == "is empty"


def test_mjml_syntax_errors_point_at_the_line() -> None:
    # mjml reports byte offsets: 30 two-byte characters before the error would put a character
    # offset two lines further down.
    body = ("{% assign x = 1 %}\n<mjml><mj-body><mj-section><mj-column>\n<mj-text>{{ x }} " + "ç" * 30
            + "</mj-text>\n</mj-column></mj-section></mj-body><p>x</p>\n\n\n</mjml>")
    error = refused(html_source(body, "mjml"))
    assert error.line == 4
    assert error.message == "MJML: unexpected element in root template"


def test_markup_between_mjml_attributes_is_refused() -> None:
    body = mjml('<mj-text>a</mj-text>\n<mj-text {% if x %}align="center"{% endif %}>b</mj-text>')
    error = refused(html_source(body, "mjml"))
    assert error.line == 3 and "between attributes" in error.message and "{% if x %}" in error.message


def test_markup_mjml_drops_is_refused() -> None:
    body = mjml('<mj-text>a</mj-text>\n<mj-divider css-class="{{ c }}" />', head="")
    body = body.replace("<mjml>", "<mjml><!-- {{ dropped }} -->")
    error = refused(html_source(body, "mjml"))
    assert error.line == 1 and "dropped" in error.message and "{{ dropped }}" in error.message


def test_markup_where_mjml_allows_no_comment_is_refused_with_a_hint() -> None:
    body = mjml("<mj-text>a</mj-text>", head='<mj-attributes>\n{% if x %}<mj-all padding="0" />{% endif %}'
                                             "</mj-attributes>")
    error = refused(html_source(body, "mjml"))
    assert error.line == 2 and "MJML allows no Liquid markup here" in error.message


def test_markup_before_and_after_the_mjml_document_is_kept() -> None:
    body = ("{% assign greeting = 'Olá' %}\n" + mjml("<mj-text>{{ greeting }} {{ name }}</mj-text>")
            + "\n{% comment %}x{% endcomment %}")
    rendered = render_email(compile_email(html_source(body, "mjml")), {"name": "Ana"})
    assert "Olá Ana" in rendered.html


def test_loops_over_table_rows_stay_in_the_table_in_html_bodies() -> None:
    body = ("<html><body><table><tr><th>Item</th></tr>\n{% for l in lines %}\n<tr><td>{{ l }}</td></tr>\n"
            "{% endfor %}\n</table></body></html>")
    rendered = render_email(compile_email(html_source(body)), {"lines": ["a", "b"]})
    assert re.search(r"<table><tbody><tr><th>Item</th></tr>\s*<tr><td>a</td></tr>\s*<tr><td>b</td></tr>\s*"
                     r"</tbody></table>", rendered.html)


def test_output_between_table_rows_is_refused_because_parsers_move_it() -> None:
    body = "<table>\n<tr><td>{{ a }}</td></tr>\n{{ stray }}\n<tr><td>b</td></tr>\n</table>"
    error = refused(html_source(body))
    assert error.line == 3 and "moved" in error.message and "{{ stray }}" in error.message


def test_output_at_the_start_of_an_html_fragment_lands_in_the_body() -> None:
    rendered = render_email(compile_email(html_source("{{ greeting }}<p>hi</p>")), {"greeting": "Hello"})
    assert "<body>Hello<p>hi</p>" in rendered.html


def test_tags_between_attributes_of_html_elements_work() -> None:
    body = '<p><a {% if vip %}class="vip"{% endif %} href="{{ url }}">x</a></p>'
    compiled = compile_email(html_source(body))
    assert render_email(compiled, {"vip": True, "url": "https://a.example/"}).html.count('class="vip"') == 1
    assert 'class="vip"' not in render_email(compiled, {"vip": False, "url": "https://a.example/"}).html


def test_comparison_operators_are_not_html_escaped_by_the_inliner() -> None:
    body = "<p>{% if n < 3 and n > 1 %}two{% endif %}</p><style>p { color: red; }</style>"
    compiled = compile_email(html_source(body))
    assert "{% if n < 3 and n > 1 %}" in compiled.html_source
    assert "two" in render_email(compiled, {"n": 2}).html


class _CountingHandler(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:
        self.hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "text/css")
        self.end_headers()
        self.wfile.write(b"p { color: red; }")

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def css_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CountingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/remote.css"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_compile_never_fetches_remote_stylesheets(css_server: str) -> None:
    _CountingHandler.hits.clear()
    compiled = compile_email(html_source(f'<html><head><link rel="stylesheet" href="{css_server}"></head>'
                                         "<body><p>x</p></body></html>"))
    assert _CountingHandler.hits == []
    assert css_server in compiled.html_source, "kept for the clients that load it"


# -- the plain-text part ------------------------------------------------------------------------------------

def test_text_part_is_derived_from_the_html_with_one_line_per_loop_row() -> None:
    compiled = compile_email(order_source())
    assert compiled.text_derived and compiled.text_source is not None
    text = render_email(compiled, variables()).text

    assert "Thank you, Ana!" in text
    assert "Item  Qty  Price\nLinen shirt, sand, M  1  39.00 EUR\nOrganic cotton socks (3 pairs)  2  12.50 EUR\n" \
           "Canvas tote bag  1  18.00 EUR" in text
    assert "1. Linen shirt, sand, M x 1\n2. Organic cotton socks (3 pairs) x 2\n3. Canvas tote bag x 1" in text
    assert "View your order (https://shop.example.com/account/orders?order=%231001&utm_source=email)" in text
    assert "Contact us (https://shop.example.com/pages/contact) · Unsubscribe (https://herald.example.com/t/u/sample)" \
        in text
    assert "Maré Goods (https://shop.example.com)" in text        # an image link labelled by its alt
    assert "Thanks Ana" not in text, "the hidden preheader is not part of the text"
    assert "font-weight" not in text and "Order #1001\n" not in text   # no <style>, no <title>
    assert "\n\n\n" not in text and text.endswith("\n") and not text.startswith("\n")


def test_the_sellers_own_text_part_is_used_as_written() -> None:
    compiled = compile_email(order_source(text="Hi {{ contact.first_name }},\n\nthanks for order {{ order.name }}."))
    assert not compiled.text_derived
    assert render_email(compiled, variables()).text == "Hi Ana,\n\nthanks for order #1001."


def test_text_falls_back_to_converting_each_rendered_html_when_needed() -> None:
    body = '<p>{{ a }}</p><div style="display:none">{% if x %}</div><p>b</p><div>{% endif %}</div><p>&#123;&#123;</p>'
    compiled = compile_email(html_source(body))
    assert compiled.text_template is None and compiled.text_source is None
    rendered = render_email(compiled, {"a": "A", "x": True})
    assert rendered.text == "A\n\nb\n\n{{\n"
    assert "<p>&#123;{</p>" in rendered.html


def test_html_to_text_layout() -> None:
    document = """<html><head><title>T</title><style>p { color: red }</style></head><body>
        <div style="display: none">preheader</div><h1>Hello  there</h1><p>Line one<br>line   two</p>
        <ul><li>first</li><li>second <b>bold</b></li></ul><ol><li>one</li><li>two</li></ol>
        <p><a href="https://a.example/x?a=1&amp;b=2">Shop now</a> or <a href="https://a.example/">https://a.example/</a>
        or <a href="mailto:help@a.example">help@a.example</a> or <a href="#top">top</a></p>
        <table><tr><td>A</td><td>B</td></tr><tr><td>&nbsp;</td><td>C</td></tr></table>
        <script>alert(1)</script><p>caf&eacute; &amp; more</p></body></html>"""
    assert html_to_text(document) == (
        "Hello there\n\nLine one\nline two\n\n- first\n- second bold\n\n1. one\n2. two\n\n"
        "Shop now (https://a.example/x?a=1&b=2) or https://a.example/ or help@a.example or top\n\n"
        "A  B\nC\n\ncafé & more\n")


# -- the rest of the contract ---------------------------------------------------------------------------------

def test_preheader_is_hidden_first_in_the_body_and_escaped() -> None:
    rendered = render_email(compile_email(order_source()), variables(first_name="<Ana>"))
    body = rendered.html.split("<body", 1)[1]
    assert re.match(r'[^>]*><div style="display:none;[^"]*">Thanks &lt;Ana&gt; &amp; see you soon</div>', body)


def test_amounts_print_as_written_and_compare_as_numbers() -> None:
    compiled = compile_email(html_source(
        "<p>{{ t }} {% if t > 50 %}big{% endif %} {% if t == 82 %}eq{% endif %} {{ t | plus: 1 }}</p>"))
    assert "<p>82.00 big eq 83.0</p>" in render_email(compiled, {"t": Amount("82.00")}).html
    with pytest.raises(ValueError, match="amount"):
        Amount("12,50")


def test_referenced_variables_are_reported() -> None:
    compiled = compile_email(order_source())
    assert {"order.name", "order.lines", "store.address", "unsubscribe_url", "contact.first_name"} <= \
        compiled.referenced
    assert not any(name.startswith("line.") for name in compiled.referenced)


def test_sample_variables_cover_the_documented_contract_in_strict_mode() -> None:
    body = """<p>{{ contact.first_name }} {{ contact.last_name }} {{ contact.email }} {{ contact.country }}
    {{ contact.language }} {{ contact.attributes.loyalty_tier }} {{ contact.tags | join: "," }}
    {{ contact.orders_count }} {{ store.name }} {{ store.url }} {{ store.address }}
    {{ order.name }} {{ order.total }} {{ order.subtotal }} {{ order.currency }} {{ order.discount_codes | join: "," }}
    {{ order.status_url }} {{ order.shipping_country }}
    {% for l in order.lines %}{{ l.title }} {{ l.quantity }} {{ l.price }} {{ l.total }} {{ l.sku }} {{ l.image }}
    {% endfor %}
    {{ order.shipping_address.name }} {{ order.shipping_address.address1 }} {{ order.shipping_address.address2 }}
    {{ order.shipping_address.city }} {{ order.shipping_address.zip }} {{ order.shipping_address.province }}
    {{ order.shipping_address.country }} {{ order.tracking.company }} {{ order.tracking.number }}
    {{ order.tracking.url }} {{ checkout.recovery_url }} {{ checkout.total }}
    {% for l in checkout.lines %}{{ l.title }}{% endfor %} {{ unsubscribe_url }}</p>"""
    render_email(compile_email(html_source(body)), SAMPLE_VARIABLES, strict=True)


def test_fast_lookups_give_the_same_output_as_python_liquid() -> None:
    body = """<p>{{ a.b.c }}|{{ a.b.missing }}|{{ a.list.size }}|{{ a.list.first }}|{{ a.list.last }}|{{ a.list[1] }}
    |{{ a.b.size }}|{{ a.map.size }}|{{ a.map.first }}|{{ s.first }}|{{ a["b"].c }}|{{ a.b[key] }}|{{ missing.x }}
    |{% for x in a.list %}{{ x }}{{ forloop.index }}{% endfor %}|{% assign y = a.b %}{{ y.c }}|{{ a.str.size }}</p>"""
    compiled = compile_email(html_source(body))
    data = {"a": {"b": {"c": "C", "size": "own size"}, "list": [1, 2, 3], "map": {"k": "v"}, "str": "four"},
            "s": "str", "key": "c"}
    library = BoundTemplate(compiled.html_template.env, compiled.html_template.nodes)
    assert render_email(compiled, data).html == library.render(data)
