"""Tokens: a random secret shown once; only its sha256 is stored."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.errors import Invalid
from app.models import Project, Token

TOKEN_PREFIX = "da_"
DISPLAY_CHARS = 10  # how much of a token is kept to recognise it (e.g. in a listing)
MAX_PROJECT_NAME = 100


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def get_or_create_project(session: Session, name: str) -> Project:
    """The project called `name`, created if it does not exist yet."""
    name = name.strip()
    if not name or len(name) > MAX_PROJECT_NAME:
        raise Invalid(f"a project name must have 1 to {MAX_PROJECT_NAME} characters")
    project = session.scalar(select(Project).where(Project.name == name))
    if project is not None:
        return project
    try:
        with session.begin_nested():
            project = Project(name=name)
            session.add(project)
    except IntegrityError:  # created concurrently
        project = session.scalars(select(Project).where(Project.name == name)).one()
    return project


def create_token(session: Session, project_name: str) -> str:
    """A new bearer token for the project (created if needed). The secret is returned once, never stored."""
    project = get_or_create_project(session, project_name)
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(Token(project_id=project.id, token_hash=hash_token(secret), prefix=secret[:DISPLAY_CHARS]))
    session.commit()
    return secret


def project_for_token(session: Session, secret: str) -> Project | None:
    """The project a token belongs to, or None for an unknown token."""
    token = session.scalar(select(Token).where(Token.token_hash == hash_token(secret)))
    return token.project if token is not None else None
