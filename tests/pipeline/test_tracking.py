"""Signed tracking URLs and the HTML rewriting that puts them into an email."""

from __future__ import annotations

import base64
import html
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from herald.pipeline.tracking import (
    BadToken,
    TrackedLink,
    TrackingLinks,
    add_open_pixel,
    is_trackable_url,
    rewrite_links,
)

BASE = "https://t.example.net"
KEY = b"k" * 32
MESSAGE_ID = "01J9Z8Y7X6W5V4T3S2R1Q0P9N8"


@pytest.fixture
def links() -> TrackingLinks:
    return TrackingLinks(BASE + "/", KEY)


def token_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


def test_click_open_and_unsubscribe_round_trip(links: TrackingLinks) -> None:
    click = links.click_url(MESSAGE_ID, "https://shop.example.com/p/1?utm=x")
    opened = links.open_url(MESSAGE_ID)
    unsubscribe = links.unsubscribe_url(MESSAGE_ID)

    assert click.startswith(BASE + "/t/c/")
    assert opened.startswith(BASE + "/t/o/") and opened.endswith(".gif")
    assert unsubscribe.startswith(BASE + "/t/u/")
    for url in (click, opened, unsubscribe):
        assert re.fullmatch(r"[A-Za-z0-9_-]+(\.gif)?", token_of(url)), "url-safe base64 without padding"
    assert links.verify(token_of(click)) == TrackedLink("click", MESSAGE_ID, "https://shop.example.com/p/1?utm=x")
    assert links.verify(token_of(opened)) == TrackedLink("open", MESSAGE_ID, None)
    assert links.verify(token_of(opened)[:-4], kind="open") == TrackedLink("open", MESSAGE_ID, None)
    assert links.verify(token_of(unsubscribe), kind="unsubscribe") == TrackedLink("unsubscribe", MESSAGE_ID, None)


def test_a_token_of_one_kind_is_refused_as_another(links: TrackingLinks) -> None:
    opened = token_of(links.open_url(MESSAGE_ID))
    unsubscribe = token_of(links.unsubscribe_url(MESSAGE_ID))
    with pytest.raises(BadToken):
        links.verify(opened, kind="unsubscribe")
    with pytest.raises(BadToken):
        links.verify(unsubscribe, kind="click")
    with pytest.raises(BadToken):
        links.verify(unsubscribe + ".gif")    # only open tokens are pixels


def test_every_single_character_change_is_rejected(links: TrackingLinks) -> None:
    token = token_of(links.click_url(MESSAGE_ID, "https://shop.example.com/a"))
    alphabet = "AQgw_-"      # differ in the high bits and the low bits of a base64 digit
    for position in range(len(token)):
        for replacement in alphabet:
            if replacement == token[position]:
                continue
            tampered = token[:position] + replacement + token[position + 1:]
            with pytest.raises(BadToken):
                links.verify(tampered)


def test_a_forged_payload_without_the_key_is_rejected(links: TrackingLinks) -> None:
    token = token_of(links.click_url(MESSAGE_ID, "https://shop.example.com/a"))
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    forged_payload = raw[:-16].replace(b"shop.example.com", b"evil.example.org")
    forged = base64.urlsafe_b64encode(forged_payload + raw[-16:]).rstrip(b"=").decode()
    with pytest.raises(BadToken):
        links.verify(forged)
    other_key = TrackingLinks(BASE, b"x" * 32)
    with pytest.raises(BadToken):
        other_key.verify(token)


@pytest.mark.parametrize("bad", ["", "a", "abc", "!!!!", "a" * 20_000, "AAAA====", "dG9rZW4"])
def test_malformed_tokens_are_rejected(links: TrackingLinks, bad: str) -> None:
    with pytest.raises(BadToken):
        links.verify(bad)


def test_padding_and_truncation_are_rejected(links: TrackingLinks) -> None:
    token = token_of(links.unsubscribe_url(MESSAGE_ID))
    for variant in (token + "=", token + "==", token[:-1], token[1:], token + "A"):
        with pytest.raises(BadToken):
            links.verify(variant)


def test_previous_keys_still_verify_but_do_not_sign() -> None:
    old = TrackingLinks(BASE, b"o" * 32)
    token = token_of(old.click_url(MESSAGE_ID, "https://shop.example.com/"))
    rotated = TrackingLinks(BASE, KEY, previous_keys=[b"o" * 32])
    assert rotated.verify(token).target == "https://shop.example.com/"
    assert token_of(rotated.click_url(MESSAGE_ID, "https://shop.example.com/")) != token
    with pytest.raises(BadToken):
        TrackingLinks(BASE, KEY).verify(token)


@pytest.mark.parametrize("target", [
    "javascript:alert(1)", "JavaScript://x/%0aalert(1)", "data:text/html,x", "//evil.example.org/",
    "/relative", "ftp://x.example/", "https://", "https://x.example/a b", "https://x.example/\r\nSet-Cookie: a=b",
    "mailto:a@example.com",
])
def test_only_http_targets_are_signed(links: TrackingLinks, target: str) -> None:
    assert not is_trackable_url(target)
    with pytest.raises(ValueError, match="http"):
        links.click_url(MESSAGE_ID, target)


def test_construction_checks_base_and_key() -> None:
    with pytest.raises(ValueError, match="base URL"):
        TrackingLinks("javascript:x", KEY)
    with pytest.raises(ValueError, match="16 bytes"):
        TrackingLinks(BASE, b"short")
    with pytest.raises(ValueError, match="message id"):
        TrackingLinks(BASE, KEY).open_url("")


# -- rewriting --------------------------------------------------------------------------------------

def hrefs(document: str) -> list[str]:
    return [html.unescape(value) for value in re.findall(r'\shref="([^"]*)"', document, re.IGNORECASE)]


def test_rewrite_signs_http_links_and_keeps_everything_else(links: TrackingLinks) -> None:
    unsubscribe = links.unsubscribe_url(MESSAGE_ID)
    document = (
        '<p><a href="https://shop.example.com/a?x=1&amp;y=2" class="btn">Shop</a>'
        "<A HREF='http://shop.example.com/b'>B</A>"
        '<a title="a > b href=nope" href=https://shop.example.com/c>C</a>'
        '<a href="mailto:help@shop.example.com">mail</a><a href="tel:+351210000000">call</a>'
        '<a href="#top">top</a><a href="/relative">rel</a><a data-href="https://x.example/">data</a>'
        f'<a href="{html.escape(unsubscribe)}">Unsubscribe</a><abbr href="https://x.example/">not a link</abbr></p>'
    )
    rewritten = links.rewrite(document, MESSAGE_ID)

    found = hrefs(rewritten)
    clicks = [links.verify(token_of(url)) for url in found if url.startswith(BASE + "/t/c/")]
    assert [click.target for click in clicks] == [
        "https://shop.example.com/a?x=1&y=2", "http://shop.example.com/b", "https://shop.example.com/c"]
    assert {click.message_id for click in clicks} == {MESSAGE_ID}
    for untouched in ('href="mailto:help@shop.example.com"', 'href="tel:+351210000000"', 'href="#top"',
                      'href="/relative"', 'data-href="https://x.example/"', 'class="btn"',
                      'title="a > b href=nope"', "<abbr href=\"https://x.example/\">"):
        assert untouched in rewritten
    assert unsubscribe in found, "the unsubscribe link stays direct"
    assert rewritten.count(">Unsubscribe</a>") == 1


def test_rewritten_hrefs_are_entity_escaped(links: TrackingLinks) -> None:
    rewritten = rewrite_links('<a href="https://s.example/?a=1&amp;b=&quot;2&quot;">x</a>',
                              lambda url: "https://t.example.net/t/c/x?u=" + url)
    assert rewritten == '<a href="https://t.example.net/t/c/x?u=https://s.example/?a=1&amp;b=&quot;2&quot;">x</a>'


def test_the_free_function_leaves_our_own_urls_alone(links: TrackingLinks) -> None:
    unsubscribe = links.unsubscribe_url(MESSAGE_ID)
    document = f'<a href="{unsubscribe}">u</a><a href="https://shop.example.com/">s</a>'
    rewritten = rewrite_links(document, lambda url: links.click_url(MESSAGE_ID, url))
    assert unsubscribe in rewritten
    assert "https://shop.example.com/" not in rewritten


def test_a_link_the_signer_refuses_is_left_as_it_is(links: TrackingLinks) -> None:
    document = '<a href="https://shop.example.com/a b">x</a>'
    assert links.rewrite(document, MESSAGE_ID) == document


def test_document_without_links_is_returned_unchanged(links: TrackingLinks) -> None:
    document = "<p>no links</p>"
    assert links.rewrite(document, MESSAGE_ID) is document


def test_open_pixel_goes_before_the_closing_body(links: TrackingLinks) -> None:
    pixel_url = links.open_url(MESSAGE_ID)
    with_body = add_open_pixel("<html><body><p>x</p></body></html>", pixel_url)
    assert re.search(r'<p>x</p><img src="[^"]+\.gif" width="1" height="1" alt=""[^>]*/></body></html>$', with_body)
    assert add_open_pixel("<P>x</P></BODY>", pixel_url).endswith("/></BODY>")
    fragment = add_open_pixel("<p>x</p>", "https://t.example.net/t/o/a&b.gif")
    assert fragment.startswith("<p>x</p><img") and 'src="https://t.example.net/t/o/a&amp;b.gif"' in fragment


# -- properties -------------------------------------------------------------------------------------

url_characters = st.characters(min_codepoint=0x21, exclude_characters="\x7f", exclude_categories=["Cs"])
http_urls = st.builds(
    lambda scheme, host, rest: f"{scheme}://{host}{rest}",
    st.sampled_from(["http", "https", "HTTPS"]),
    st.from_regex(r"[a-z0-9](?:[a-z0-9.-]{0,40}[a-z0-9])?(?::[0-9]{1,5})?", fullmatch=True),
    st.one_of(st.just(""), st.builds(lambda p: "/" + p, st.text(url_characters, max_size=200)),
              st.builds(lambda q: "?" + q, st.text(url_characters, max_size=100))),
)
message_ids = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=60).filter(
    lambda m: len(m.encode()) <= 255)


@settings(max_examples=300, deadline=None)
@given(message_id=message_ids, url=http_urls)
def test_click_urls_round_trip_for_any_http_url(message_id: str, url: str) -> None:
    links = TrackingLinks(BASE, KEY)
    assert links.verify(token_of(links.click_url(message_id, url)), kind="click") == TrackedLink(
        "click", message_id, url)


@settings(max_examples=200, deadline=None)
@given(url=http_urls)
def test_rewrite_then_verify_gives_back_the_written_href(url: str) -> None:
    links = TrackingLinks(BASE, KEY)
    document = f'<p><a href="{html.escape(url, quote=True)}">x</a></p>'
    (tracked,) = hrefs(links.rewrite(document, MESSAGE_ID))
    assert links.verify(token_of(tracked)).target == url
