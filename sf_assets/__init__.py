"""SpikeForest-style spike-sorting benchmarks as a Dagster asset graph (see the README's package layout)."""
