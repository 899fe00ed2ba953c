"""The operator's certificate authority toolkit: issue, revoke, rotate, inspect, import partners."""
