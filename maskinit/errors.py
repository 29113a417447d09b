"""The one error type of maskinit and the exit codes the CLI ends with.

`MaskinitError` is a problem maskinit can name in one line; the CLI prints it as one red line and exits
with the code `EXIT_CODES` gives its kind, so that a scheduler (SLURM, a shell loop) can act on the code:
requeue an interrupted run with `--resume`, stop a diverged one, retry a failed one.
"""

# The exit code of each way a command ends other than success (docs/training.md and docs/cluster.md show it).
EXIT_CODES = {
    "failed": 1,  # the run started and failed (a crash, a disk full, a process that died)
    "bad_input": 2,  # refused before anything ran: options, files, data (a plain MaskinitError)
    "diverged": 3,  # the loss or the weights became non-finite; the last finite checkpoint is kept
    "SIGINT": 130,  # interrupted by Ctrl-C / SIGINT; the line says which checkpoint resumes it
    "SIGTERM": 143,  # interrupted by SIGTERM (a scheduler's preemption); the same
}


class MaskinitError(Exception):
    """A problem with the user's input (options, files, data) that maskinit can name in one line."""

    kind = "bad_input"

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.kind]


class RunFailed(MaskinitError):
    """A run that started and did not finish (not for lack of a valid input)."""

    kind = "failed"


class RunDiverged(MaskinitError):
    """A run whose loss or weights became non-finite."""

    kind = "diverged"


class RunInterrupted(MaskinitError):
    """A run stopped by SIGINT or SIGTERM (after saving a checkpoint when training had started)."""

    def __init__(self, message: str, signal_name: str = "SIGINT"):
        super().__init__(message)
        self.signal_name = signal_name

    @property
    def kind(self) -> str:
        return self.signal_name if self.signal_name in EXIT_CODES else "SIGINT"


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived (the CLI raises it for SIGTERM as Python does KeyboardInterrupt for SIGINT)."""

    def __init__(self, signal_name: str = "SIGINT"):
        super().__init__(signal_name)
        self.signal_name = signal_name


def signal_name(interrupt: KeyboardInterrupt) -> str:
    """SIGTERM for an `Interrupted` raised by the CLI's SIGTERM handler, else SIGINT (Ctrl-C)."""
    return getattr(interrupt, "signal_name", "SIGINT")


def exit_code(error: BaseException) -> int:
    """The exit code a command ends with for `error` (`EXIT_CODES`): 2 for bad input, 130/143 for signals."""
    if isinstance(error, MaskinitError):
        return error.exit_code
    if isinstance(error, KeyboardInterrupt):
        return EXIT_CODES.get(signal_name(error), EXIT_CODES["SIGINT"])
    return EXIT_CODES["failed"]


def one_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
