"""SMS providers: Twilio (twilio.py), SMPP (smpp.py), a generic HTTP gateway (http_gateway.py).
Segments are counted by herald.domain.sms."""
