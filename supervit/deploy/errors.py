"""The one error type of ``supervit.deploy`` that the command line turns into a one-line message and exit 2."""
from __future__ import annotations


class DeployError(ValueError):
    """A user error (bad argument, unusable file, unmet budget): the message names the value and what would work."""
