"""Drivers the tests and the benchmarks share (a ``dagster dev`` deployment, the daemon's passes, a
webserver, a Slurm cluster); not part of the installed package."""
