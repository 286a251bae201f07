"""Where data lives: kachery, the workspace database, manifest and spec sources, viewer registry."""
