"""The ``eigenarch`` command line, one module per command group above the library.

Each module parses its commands' options, calls one library function and prints; ``app``
assembles them (:mod:`eigenarch.cli.app`). No library module imports this package.
"""
