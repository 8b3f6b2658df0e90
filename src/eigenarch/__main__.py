"""``python -m eigenarch`` (and ``torchrun -m eigenarch``) runs the CLI."""

from eigenarch.cli import main

main()
