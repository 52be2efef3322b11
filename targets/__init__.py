"""Target descriptions (data): one TOML file per target, read by tinydeploy.target."""
