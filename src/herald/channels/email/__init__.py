"""Email providers and the email wire formats they share (MIME, DKIM, DSN/ARF)."""
