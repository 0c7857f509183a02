"""gunicorn entry point: ``gunicorn -c deploy/gunicorn.conf.py wsgi:app``."""

from pnp_integrated import create_app

app = create_app()
