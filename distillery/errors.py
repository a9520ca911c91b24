"""Errors that stop a lifecycle step with a message saying what to do."""


class DistilleryError(Exception):
    """A user-facing failure: the message names the workload and the next step."""
