"""``python -m pnp_integrated.lab.hold_sessions``: the session holders of :mod:`.holders` as a program, under gevent."""

from gevent import monkey

monkey.patch_all()  # before the holders' sockets exist; only this program is patched, never an importer

from .holders import main  # noqa: E402

if __name__ == "__main__":
    main()
