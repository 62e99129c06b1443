"""Channel provider adapters: one module per provider (email/smtp.py, email/ses.py, ...), each
implementing the protocols in domain/delivery.py. They translate, never police. Only
bootstrap.py names a concrete provider (through channels/registry.py)."""
