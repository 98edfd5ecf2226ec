"""The one exception family of ukl-build.

Every failure a user can act on is a :class:`UklError` whose message says what
failed and where, and whose ``hint`` says what to do next.  The CLI and the
PEP 517 backend print it without a traceback; the traceback goes to the log.
"""

from __future__ import annotations


class UklError(Exception):
    """A failure with a message meant for the user."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class ConfigError(UklError):
    """Bad settings: names the file and the key."""


class SourceError(UklError):
    """The kernel source could not be fetched, verified or extracted."""


class BuildError(UklError):
    """A build step (kconfig, app, kernel) failed."""


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the signal arrived: every cleanup that an
    interrupt (SIGINT) runs runs for these too, so nothing half-made is left."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
