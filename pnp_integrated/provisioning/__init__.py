"""Provisioning: profiles, device matching, the persisted per-device job state machine, templates."""
