"""pnp-integrated: the Cisco Prime Infrastructure integrated Plug and Play gateway, rebuilt as a Flask extension."""

from .config import ConfigError, Settings, load_settings
from .extension import PnPGateway, SchemaError, create_app
from .version import __version__

__all__ = ["ConfigError", "PnPGateway", "SchemaError", "Settings", "__version__", "create_app", "load_settings"]
