"""The one error type for user mistakes: the CLI prints its message as one line and exits with 2."""


class UserError(Exception):
    """A mistake the user can fix; the message names the file or field and the fix."""
