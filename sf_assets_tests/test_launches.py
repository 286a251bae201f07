"""Which launch a run belongs to (pure: tags in, a name out)."""
from sf_assets.orchestration.launches import BACKFILL_TAG, LEASE_TAG, SCHEDULE_TAG, SOURCES_TAG, launch_of


def test_a_run_belongs_to_its_lease_backfill_sensor_sources_or_schedule_in_that_order():
    tags = {SCHEDULE_TAG: "nightly", SOURCES_TAG: "abc", BACKFILL_TAG: "b1", LEASE_TAG: "host:1"}
    assert launch_of("r1", tags) == f"{LEASE_TAG}=host:1"
    del tags[LEASE_TAG]
    assert launch_of("r1", tags) == f"{BACKFILL_TAG}=b1"
    del tags[BACKFILL_TAG]
    assert launch_of("r1", tags) == f"{SOURCES_TAG}=abc"
    del tags[SOURCES_TAG]
    assert launch_of("r1", tags) == f"{SCHEDULE_TAG}=nightly"


def test_a_run_without_a_launch_tag_is_a_launch_of_its_own():
    assert launch_of("r1", {"other": "x"}) == "run=r1" != launch_of("r2", {})
    assert launch_of("r1", {LEASE_TAG: ""}) == "run=r1", "an empty tag names no launch"


def test_a_launch_with_a_run_that_may_land_more_has_not_settled():
    from sf_assets.orchestration.launches import RunInFlight, some_launch_settled

    sorting = RunInFlight("A", feeds=frozenset({"sorting", "sorting_comparison"}))
    assert not some_launch_settled(["A"], [sorting]), "a sort of the launch is still to land"
    recording = RunInFlight("A")
    assert not some_launch_settled(["A"], [recording]), "a recording's run: its sorts are still to come"
    assert some_launch_settled(["A", "B"], [sorting]), "launch B has settled"
    assert some_launch_settled(["A"], [RunInFlight("B", feeds=frozenset({"sorting"}))])
    assert not some_launch_settled([], [])


def test_a_run_that_landed_everything_it_feeds_no_longer_holds_its_launch_back():
    """Its comparison landed; only the run's end remains, which the fan-in does not read."""
    from sf_assets.orchestration.launches import RunInFlight, some_launch_settled

    feeds = frozenset({"sorting", "sorting_comparison"})
    finishing = RunInFlight("A", feeds=feeds, landed=feeds)
    assert some_launch_settled(["A"], [finishing])
    halfway = RunInFlight("A", feeds=feeds, landed=frozenset({"sorting"}))
    assert not some_launch_settled(["A"], [halfway]), "its comparison is still to land"
