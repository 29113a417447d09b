"""`python -m maskinit`: the same CLI as the `maskinit` command."""

from .cli import app

app(prog_name="maskinit")
