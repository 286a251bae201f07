"""How a sort runs: workers, the sort service, the run host, local, container and Slurm engines."""
