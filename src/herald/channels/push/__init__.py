"""Push providers: Web Push (webpush.py, VAPID + RFC 8291 encryption), Firebase Cloud Messaging
HTTP v1 (fcm.py) and Apple Push Notification service (apns.py), plus what they share (common.py).
None of them sends status callbacks, so there is no callback parser here: a push is known only as
accepted or refused by the push service."""
