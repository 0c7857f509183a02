"""CNS gateway: dispatcher and gateway ports (the CNS-W1 protocol is served here)."""

from __future__ import annotations

from flask import Flask

from ..listeners import StreamHandler, close_at_once


def stream_handler_for(app: Flask, port: int) -> StreamHandler:
    """The connection handler of a CNS port. Until the CNS protocol is served, a port accepts and closes."""
    del app, port
    return close_at_once
