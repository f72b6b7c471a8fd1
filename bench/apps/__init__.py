"""The web applications issue 13's bench scenarios serve, the same under every server."""
