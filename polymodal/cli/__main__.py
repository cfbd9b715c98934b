"""`python -m polymodal.cli`, as the single-module cli.py allowed."""

from polymodal.cli import main

main()
