"""The one error type of maskinit: the CLI prints it as one red line and exits with code 2."""


class MaskinitError(Exception):
    """A problem with the user's input (options, files, data) that maskinit can name in one line."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived (the CLI raises it for SIGTERM as Python does KeyboardInterrupt for SIGINT)."""

    def __init__(self, signal_name: str = "SIGINT"):
        super().__init__(signal_name)
        self.signal_name = signal_name


def signal_name(interrupt: KeyboardInterrupt) -> str:
    """SIGTERM for an `Interrupted` raised by the CLI's SIGTERM handler, else SIGINT (Ctrl-C)."""
    return getattr(interrupt, "signal_name", "SIGINT")


def one_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
