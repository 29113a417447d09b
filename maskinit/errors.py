"""The one error type of maskinit: the CLI prints it as one red line and exits with code 2."""


class MaskinitError(Exception):
    """A problem with the user's input (options, files, data) that maskinit can name in one line."""
