"""``python -m adaptune``: the command line (what torchrun starts on every rank for ``adaptune train --nproc``)."""

from adaptune.cli import app

app(prog_name="adaptune")
