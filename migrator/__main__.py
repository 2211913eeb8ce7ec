"""`python -m migrator` runs the command line, like the `migrator` console script."""

from migrator.cli import main

main()
