"""`python -m maskinit.cli`: the same CLI as the `maskinit` command."""

from . import app

app(prog_name="maskinit")
