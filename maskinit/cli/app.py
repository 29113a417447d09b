"""The typer app every command registers on, and what every command shares: one red line and the exit
code of its kind for a `MaskinitError`, SIGTERM handled as Ctrl-C, `--debug` and `--version`."""

from __future__ import annotations

import functools
import logging
import os
import signal
import warnings

import typer
from rich.markup import escape

from .. import __version__
from ..errors import Interrupted, MaskinitError, exit_code, signal_name
from ..printing import console, err_console

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Train Mask R-CNN from scratch on Detectron2.",
    pretty_exceptions_enable=False,
)
STATE = {"debug": False}
# detectron2.model_zoo imports pkg_resources; setuptools<81 is pinned, its notice is noise here.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated")


def fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def handles_errors(command):
    """Turn `MaskinitError` (and bad files) into one red line and the exit code of its kind (`EXIT_CODES`)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        if not STATE["debug"]:
            warnings.filterwarnings("ignore")
        try:
            return command(*args, **kwargs)
        except MaskinitError as error:
            if STATE["debug"]:
                raise
            fail(str(error), exit_code(error))
        except KeyboardInterrupt as interrupt:  # Ctrl-C, or SIGTERM (see `main`)
            if STATE["debug"]:
                raise
            fail(f"interrupted by {signal_name(interrupt)}", exit_code(interrupt))

    return wrapper


def _terminate(signum, frame):
    raise Interrupted("SIGTERM")


def version_callback(value: bool):
    if value:
        console.print(f"maskinit {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=version_callback, is_eager=True, help="Print the version."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors."),
):
    """Train Mask R-CNN from scratch on Detectron2."""
    STATE["debug"] = debug or bool(os.environ.get("MASKINIT_DEBUG"))
    # SIGTERM stops a command as Ctrl-C does, so that it too ends with one line saying so
    signal.signal(signal.SIGTERM, _terminate)
    if not STATE["debug"]:
        logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
