"""How sorts run on Slurm: the settings the dispatcher, the allocations and the step launcher share.

Its own module, below :mod:`sf_assets.engines.engine` (the dispatcher) and the
Slurm modules it dispatches to, so that each imports it without importing the
other.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SlurmSettings:
    partition: str | None = None
    accept_shared_nodes: bool = False
    jobs_per_allocation: int = 6
    max_simultaneous_allocations: int = 5
    gpus_per_node: int | None = None
    # salloc job id(s), comma-separated, from slurm_allocations(); None: the campaign's own
    # allocations (see slurm_pool), requested as sorts arrive.
    allocation_id: str | None = None
    # An allocation ends once no sort has used it for this long (see slurm_holder).
    idle_release_s: float = 60.0
    # An allocation's walltime in minutes; 0: the sort timeout plus a margin (see slurm_pool).
    allocation_time_min: float = 0.0
