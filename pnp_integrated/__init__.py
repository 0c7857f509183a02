"""pnp-integrated: the Cisco Prime Infrastructure integrated Plug and Play gateway, rebuilt as a Flask extension."""

__version__ = "0.1.0"

from .config import ConfigError, Settings, load_settings  # noqa: E402
from .extension import PnPGateway, SchemaError, create_app  # noqa: E402

__all__ = ["ConfigError", "PnPGateway", "SchemaError", "Settings", "__version__", "create_app", "load_settings"]
