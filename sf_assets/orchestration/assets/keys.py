"""The asset keys that code outside their asset's module names, each defined once.

The planner, the sensor, the schedule, the command line and the event-log
readers need the sorting asset's key without importing the sorting asset
(which imports the planner).
"""
from __future__ import annotations

import dagster as dg

SORTING_KEY = dg.AssetKey("sorting")
