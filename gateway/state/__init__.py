"""The gateway's own state: outbox, duplicate claims, dead letters, known requests."""
