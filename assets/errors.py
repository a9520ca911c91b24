import contextlib
from typing import Iterator

import dagster as dg

from distillery.errors import DistilleryError


@contextlib.contextmanager
def user_errors_as_failures() -> Iterator[None]:
    """Show a DistilleryError as a plain failure message in Dagster, not as a stack trace."""
    try:
        yield
    except DistilleryError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
