"""`python -m workers ...` is the same as the `fleet` console script."""

from workers.cli import main

main()
