"""One error type for everything a user can fix; the CLI prints it on one line and exits with code 2."""


class SubprofError(Exception):
    """A problem with the user's input or environment, with the fix in the message."""
