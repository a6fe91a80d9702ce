"""The core's error classes: what the user must fix versus everything else.

`InvalidInput` (and its subclasses) means the request, upload or spec cannot work as given and its
message says what to fix, without server paths; the API answers it with a 4xx and a job that meets
it fails at once, without retries. Any other exception is a defect or an outage: the worker retries
it up to its limit and then fails the job with the error's type and message.

`InvalidInput` subclasses `ValueError` so that it may be raised inside pydantic validators.
"""

from __future__ import annotations


class DiffauditError(Exception):
    """Base of every error the core raises on purpose."""


class InvalidInput(DiffauditError, ValueError):
    """The user's input cannot be used; the message says what to fix."""
