"""The ``flnode`` command line: one module per command, registered on one click group."""
