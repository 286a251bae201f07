"""The ``sf-assets`` command line: flags, subcommands and the launch of a campaign's runs.

The parser, :func:`main` (called in-process by the tests) and the console
script ``sf_assets.cli.entry:console_main`` (``pyproject.toml``) live in
:mod:`sf_assets.cli.entry`.
"""
from sf_assets.cli.entry import main

__all__ = ["main"]
