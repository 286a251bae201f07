"""``python -m sf_assets.cli``: the ``sf-assets`` command without its console script."""
import sys

from sf_assets.cli.entry import console_main

sys.exit(console_main())
