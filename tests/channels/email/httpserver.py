"""The ESP tests' names for the shared provider test server (tests/channels/httpserver.py): a
request is `Posted`, an answer function a `PostAnswer`, `serve_posts` the server."""

from __future__ import annotations

from tests.channels.httpserver import Answer as PostAnswer
from tests.channels.httpserver import Seen as Posted
from tests.channels.httpserver import closed_port, json_reply
from tests.channels.httpserver import serve as serve_posts

__all__ = ["PostAnswer", "Posted", "closed_port", "json_reply", "serve_posts"]
