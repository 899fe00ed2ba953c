"""Identity and trust: partners' certificates, pins and CRLs, and the connection gate."""
