"""The ``polarxr`` command: a thin Typer layer over polarxr's public functions."""
