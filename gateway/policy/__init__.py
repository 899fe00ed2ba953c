"""The agreement policy engine (pure: no I/O), redactions and rate limits."""
