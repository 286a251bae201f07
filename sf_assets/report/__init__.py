"""What people read: the static results page and its plots (no Dagster import)."""
