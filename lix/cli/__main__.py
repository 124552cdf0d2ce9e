"""`python -m lix.cli ...`: the same command line as the `lix` console script."""

from lix.cli import app

app()
