"""The two message pipelines, outbound and inbound, and what they share."""
