"""The one base class of problems a user fixes (bad params, a bad corpus file, a bad checkpoint).

Their messages name the file and the fix; a stage's entry point (``pipelines.flows.run_stage``) prints
such a message alone and exits, where any other exception keeps its traceback for a developer.
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """A problem in what the user gave, fully described by its message."""
