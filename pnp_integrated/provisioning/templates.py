"""Configuration templates: Jinja2 in a sandbox, rendered per device.

Templates come from operators (REST API) and from Prime (broker commands), so they run in Jinja2's
``SandboxedEnvironment``: no attribute access to Python internals. Rendering for a device uses ``StrictUndefined``,
because a configuration with a silently empty hostname or address is worse than no configuration at all.

Variables, lowest precedence first: what the device told us (``serial``, ``pid``, ``hostname``, ``address``), the
profile's ``variables``, the device's own ``variables`` (set per serial through the API).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from jinja2 import (
    ChainableUndefined,
    StrictUndefined,
    Template,
    TemplateError,
    TemplateSyntaxError,
    Undefined,
    UndefinedError,
)
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

from ..models import Device, Profile

# Configuration text is CLI, not HTML: no autoescape; keep the final newline IOS expects.
_STRICT = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


class _SaveTimeSandbox(SandboxedEnvironment):
    """At save time per-device variables are unknown, so undefined names render empty; unsafe access still fails."""

    def unsafe_undefined(self, obj: Any, attribute: str) -> Undefined:
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")


_LENIENT = _SaveTimeSandbox(undefined=ChainableUndefined, autoescape=False, keep_trailing_newline=True)


@functools.lru_cache(maxsize=256)
def _compiled(source: str) -> Template:
    """A template compiled once per text: every device of a profile renders the same few templates, and compiling
    costs far more than rendering. Keyed by the text itself, so an edited template is compiled anew."""
    return _STRICT.from_string(source)


class TemplateProblem(ValueError):
    """A template cannot be compiled or rendered; the message says where and why."""


def _describe(exc: TemplateError, label: str) -> str:
    where = f" line {exc.lineno}" if isinstance(exc, TemplateSyntaxError) and exc.lineno else ""
    if isinstance(exc, UndefinedError):
        return f"{label}: {exc.message} (set it in the profile's or the device's variables)"
    return f"{label}{where}: {exc.message or type(exc).__name__}"


def check_template(source: str, variables: Mapping[str, Any] | None = None, label: str = "template") -> None:
    """Raise :class:`TemplateProblem` when ``source`` would fail for every device (syntax, unknown filter, sandbox)."""
    if not source:
        return
    try:
        _LENIENT.from_string(source).render(dict(variables or {}))
    except TemplateError as exc:
        raise TemplateProblem(_describe(exc, label)) from exc
    except (TypeError, ValueError, ArithmeticError) as exc:  # e.g. ``{{ 1 / 0 }}`` or a bad format string
        raise TemplateProblem(f"{label}: {exc}") from exc


def render_template(source: str, variables: Mapping[str, Any], label: str = "template") -> str:
    """Render ``source`` with ``variables``; any undefined name is an error (:class:`TemplateProblem`)."""
    try:
        return _compiled(source).render(dict(variables))
    except TemplateError as exc:
        raise TemplateProblem(_describe(exc, label)) from exc
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise TemplateProblem(f"{label}: {exc}") from exc


def device_variables(profile: Profile | None, device: Device, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The variables a template sees for ``device`` under ``profile`` (precedence in the module docstring)."""
    out: dict[str, Any] = {
        "serial": device.serial,
        "pid": device.pid or "",
        "hostname": device.hostname or "",
        "address": device.address or "",
    }
    if profile is not None:
        out.update(profile.variables or {})
    out.update(device.variables or {})
    out.update(extra or {})
    return out
