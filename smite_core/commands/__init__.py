"""The ``smite`` command line: ``cli`` (every subcommand) and ``demo`` (``smite demo``)."""
