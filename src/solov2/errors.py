"""The one exception type for problems with the user's input (files, options, data)."""


class SolovError(Exception):
    """Bad input. The command-line tools print it as one line `error: <message>` and exit with code 2."""
