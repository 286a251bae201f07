"""Pure logic at the bottom of the package: no Dagster, nothing from the layers above."""
