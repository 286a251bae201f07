"""The ``sf-assets`` command line: flags, subcommands and the launch of a campaign's runs.

``sf_assets.cli:main`` is the console script (``pyproject.toml``); the parser
and :func:`main` live in :mod:`sf_assets.cli.entry`.
"""
from sf_assets.cli.entry import main

__all__ = ["main"]
