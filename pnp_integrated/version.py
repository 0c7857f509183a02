"""The release of pnp-integrated (shown by /status, the dashboard and the OpenAPI document)."""

__version__ = "0.1.0"
