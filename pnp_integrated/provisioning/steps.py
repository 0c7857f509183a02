"""The step table of a provisioning job: one row per step, each with when it applies, what it asks and how it checks.

The engine (:mod:`.engine`) walks :data:`STEPS` in order; this module only says what each step is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from ..models import Device, Image, Profile, ProvisioningJob
from .templates import TemplateProblem, device_variables, render_template
from .types import ActionKind, DeviceFacts, ImageRef, Outcome, StepImpossible


@dataclass
class Work:
    """One unit of engine work: the locked job with its device and profile."""

    job: ProvisioningJob
    device: Device
    profile: Profile | None

    @property
    def facts(self) -> DeviceFacts:
        return DeviceFacts(**(self.job.context or {}).get("facts", {}))

    def remember(self, **values: Any) -> None:
        # JSON columns only notice reassignment, not in-place mutation.
        self.job.context = {**(self.job.context or {}), **values}


@dataclass(frozen=True)
class Step:
    """One row of the state machine.

    ``skip`` says why the step does not apply (None: it does); ``request`` builds the fields of the request sent to
    the device (may raise :class:`StepImpossible`); ``check`` looks at a successful outcome and returns a problem
    that turns it into a failure (None: the step succeeded).
    """

    name: str
    kind: ActionKind
    skip: Callable[[Work], str | None]
    request: Callable[[Work], dict[str, Any]]
    check: Callable[[Work, Outcome], str | None]


def _always(_work: Work) -> str | None:
    return None


def _nothing(_work: Work) -> dict[str, Any]:
    return {}


def _accept(_work: Work, _outcome: Outcome) -> str | None:
    return None


def same_version(a: str, b: str) -> bool:
    """Version strings compare equal ignoring case, separators and leading zeros (``16.09.05`` == ``16.9.5``)."""
    def parts(v: str) -> list[str]:
        tokens = "".join(ch if ch.isalnum() else " " for ch in v.lower()).split()
        return [t.lstrip("0") or "0" if t.isdigit() else t for t in tokens]

    return bool(a) and bool(b) and parts(a) == parts(b)


def _store_facts(work: Work, outcome: Outcome) -> None:
    facts = outcome.facts or DeviceFacts()
    work.remember(facts=asdict(facts))
    if facts.version:
        work.device.software_version = facts.version[:100]
    if facts.pid and not work.device.pid:
        work.device.pid = facts.pid[:255]
    if facts.hostname:
        work.device.hostname = facts.hostname[:255]


def _identified(work: Work, outcome: Outcome) -> str | None:
    _store_facts(work, outcome)
    return None


def _image(work: Work) -> Image | None:
    return work.profile.image if work.profile is not None else None


def _image_skip(work: Work) -> str | None:
    image = _image(work)
    if image is None:
        return "the profile has no image"
    if same_version(work.facts.version, image.version):
        return f"the device already runs version {image.version}"
    return None


def _image_request(work: Work) -> dict[str, Any]:
    image = _image(work)
    assert image is not None
    free = work.facts.filesystems
    filesystem = ""
    if free:
        filesystem, most = max(free.items(), key=lambda item: item[1])
        if most < image.size:
            raise StepImpossible(
                f"not enough free space for image {image.name} ({image.size} bytes): the largest free space the "
                f"device reported is {most} bytes on {filesystem}"
            )
    ref = ImageRef(name=image.name, version=image.version, md5=image.md5, size=image.size,
                   path=f"/images/{image.filename}", reload=bool(work.profile and work.profile.reload_after_install),
                   filesystem=filesystem)
    return {"image": asdict(ref)}


def _image_installed(work: Work, _outcome: Outcome) -> str | None:
    request = work.job.pending_request or {}
    work.remember(installed=request.get("image"))
    return None


def _verify_skip(work: Work) -> str | None:
    installed = (work.job.context or {}).get("installed")
    if not installed:
        return "no image was installed"
    if not installed.get("reload"):
        return "the image was installed without a reload; it runs after the next one"
    return None


def _verify_check(work: Work, outcome: Outcome) -> str | None:
    _store_facts(work, outcome)
    expected = (work.job.context or {}).get("installed", {}).get("version", "")
    running = work.facts.version
    if expected and not same_version(running, expected):
        return f"after the image install the device runs version {running or '(not reported)'}, expected {expected}"
    return None


def _template_step(attribute: str, label: str) -> tuple[Callable[[Work], str | None], Callable[[Work], dict]]:
    def skip(work: Work) -> str | None:
        if work.profile is None or not getattr(work.profile, attribute):
            return f"the profile has no {label}"
        return None

    def request(work: Work) -> dict[str, Any]:
        assert work.profile is not None
        try:
            text = render_template(getattr(work.profile, attribute), device_variables(work.profile, work.device),
                                   label=f"{label} of profile {work.profile.name}")
        except TemplateProblem as exc:
            raise StepImpossible(str(exc)) from exc
        return {"config_text": text, "apply_to": work.profile.apply_to or "running"}

    return skip, request


_config_skip, _config_request = _template_step("config_template", "configuration template")
_post_skip, _post_request = _template_step("post_template", "post-PnP template")

STEPS: tuple[Step, ...] = (
    Step("identify", ActionKind.IDENTIFY, _always, _nothing, _identified),
    Step("image", ActionKind.IMAGE_INSTALL, _image_skip, _image_request, _image_installed),
    Step("image.verify", ActionKind.IDENTIFY, _verify_skip, _nothing, _verify_check),
    Step("config", ActionKind.CONFIG, _config_skip, _config_request, _accept),
    Step("post_config", ActionKind.POST_CONFIG, _post_skip, _post_request, _accept),
    Step("save", ActionKind.SAVE, _always, _nothing, _accept),
)
STEP_NAMES = tuple(step.name for step in STEPS)
BY_NAME = {step.name: step for step in STEPS}
