"""WhatsApp providers: the WhatsApp Business Cloud API (cloud.py)."""
