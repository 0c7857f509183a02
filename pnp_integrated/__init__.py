"""pnp-integrated: the Cisco Prime Infrastructure integrated Plug and Play gateway, rebuilt as a Flask extension."""

__version__ = "0.1.0"

from .config import ConfigError, Settings, load_settings
from .extension import PnPGateway, SchemaError, create_app

__all__ = ["ConfigError", "PnPGateway", "SchemaError", "Settings", "__version__", "create_app", "load_settings"]
