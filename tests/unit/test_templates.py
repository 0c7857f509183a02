"""Configuration templates: sandboxed, strict about undefined names, precise about errors."""

from __future__ import annotations

import pytest

from pnp_integrated.models import Device, Profile
from pnp_integrated.provisioning.templates import TemplateProblem, check_template, device_variables, render_template


def test_renders_cli_text_without_escaping_and_keeps_final_newline() -> None:
    text = render_template("banner motd ^{{ msg }}^\n", {"msg": "<authorised & only>"})
    assert text == "banner motd ^<authorised & only>^\n"


def test_undefined_variable_is_named() -> None:
    with pytest.raises(TemplateProblem, match="'site' is undefined"):
        render_template("hostname {{ site }}", {}, label="configuration template")


def test_sandbox_refuses_python_internals() -> None:
    with pytest.raises(TemplateProblem):
        render_template("{{ ''.__class__.__mro__[1].__subclasses__() }}", {})
    with pytest.raises(TemplateProblem):
        check_template("{{ cycler.__init__.__globals__ }}")


def test_check_reports_syntax_errors_with_line_but_accepts_unknown_device_values() -> None:
    check_template("hostname {{ name }}\n{% for vlan in vlans %}vlan {{ vlan }}\n{% endfor %}")
    with pytest.raises(TemplateProblem, match="line 2"):
        check_template("hostname x\n{% if %}\n", label="configuration template")
    with pytest.raises(TemplateProblem, match="nosuchfilter"):
        check_template("{{ name | nosuchfilter }}")


def test_variable_precedence_device_over_profile_over_reported() -> None:
    profile = Profile(name="p", variables={"hostname": "generic", "site": "lyon"})
    device = Device(serial="FOC1", pid="ISR4331", hostname="Router", address="10.0.0.9",
                    variables={"hostname": "edge-1"})
    variables = device_variables(profile, device)
    assert variables["hostname"] == "edge-1" and variables["site"] == "lyon"
    assert (variables["serial"], variables["pid"], variables["address"]) == ("FOC1", "ISR4331", "10.0.0.9")
