"""The ``clayflow`` command (the only package that uses argparse)."""
