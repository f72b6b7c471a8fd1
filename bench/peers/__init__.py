"""The servers sockpool is measured against, all serving the same handlers."""
