"""The ``joules`` command: thin argument parsing over library calls."""
