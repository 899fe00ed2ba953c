"""Configuration: ``gateway.toml``, partners and agreements, validated into frozen settings."""
