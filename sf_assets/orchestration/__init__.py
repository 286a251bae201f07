"""The Dagster layer: assets and checks, partitions, jobs, resources, sensors, schedules and the run launcher."""
