"""REST API bearer tokens: random secrets shown once; only their SHA-256 is stored."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select

from ..models import ApiToken, AuditEntry, db, utcnow

ROLES = ("admin", "read")
PREFIX = "pnp_"


def token_digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def issue_token(name: str, role: str, actor: str = "cli") -> str:
    """Create a token with ``role`` and commit it; returns the secret, which is not stored anywhere."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if not name or len(name) > 255:
        raise ValueError("a token name is 1 to 255 characters")
    raw = PREFIX + secrets.token_urlsafe(32)
    db.session.add(ApiToken(name=name, role=role, token_sha256=token_digest(raw)))
    db.session.add(AuditEntry(actor=actor, action="token.create", target=name, detail={"role": role}))
    db.session.commit()
    return raw


def token_for(raw: str) -> ApiToken | None:
    """The live (not revoked) token whose secret is ``raw``."""
    if not raw or len(raw) > 512:
        return None
    token = db.session.scalar(select(ApiToken).where(ApiToken.token_sha256 == token_digest(raw)))
    if token is None or token.revoked_at is not None:
        return None
    return token


def revoke_token(name: str, actor: str = "cli") -> int:
    """Revoke every live token called ``name``; returns how many."""
    tokens = list(db.session.scalars(select(ApiToken).where(ApiToken.name == name, ApiToken.revoked_at.is_(None))))
    for token in tokens:
        token.revoked_at = utcnow()
    if tokens:
        db.session.add(AuditEntry(actor=actor, action="token.revoke", target=name, detail={"count": len(tokens)}))
    db.session.commit()
    return len(tokens)
