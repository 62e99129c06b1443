"""Store connectors: one module per platform (shopify, woocommerce, magento, custom), each
implementing domain/connectors.py. They import only domain types and never each other."""
