"""The gateway's HTTP listeners: the partner API and the admin listener, with their guards."""
