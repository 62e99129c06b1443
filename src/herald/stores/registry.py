"""Platform name -> connector, and the factory for a store's API client (backfill).
Only bootstrap.py imports this module."""

from __future__ import annotations

from collections.abc import Mapping

from herald.domain.connectors import StoreApi, WebhookConnector
from herald.stores.custom import CustomSiteConnector
from herald.stores.magento import MagentoConnector
from herald.stores.shopify import ShopifyApi, ShopifyConnector
from herald.stores.woocommerce import WooCommerceApi, WooCommerceConnector


def connectors() -> Mapping[str, WebhookConnector]:
    found: dict[str, WebhookConnector] = {}
    for connector in (ShopifyConnector(), WooCommerceConnector(), MagentoConnector(), CustomSiteConnector()):
        found[connector.platform] = connector
    return found


def make_api(platform: str, base_url: str, credentials: Mapping[str, str]) -> StoreApi:
    """A client for the store's API; the caller closes it (`await api.aclose()`)."""
    if platform == "shopify":
        return ShopifyApi(base_url, credentials["access_token"])
    if platform == "woocommerce":
        return WooCommerceApi(base_url, credentials["consumer_key"], credentials["consumer_secret"])
    raise ValueError(f"no backfill API client for {platform!r} stores")
