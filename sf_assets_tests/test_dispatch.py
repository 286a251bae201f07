"""The order in which idle launch slots take ready runs (sorter affinity)."""
from __future__ import annotations

from sf_assets.core.dispatch import AffinityQueue, Task


def _queue(*tasks: Task) -> AffinityQueue:
    queue = AffinityQueue()
    for task in tasks:
        queue.add(task)
    return queue


def _drain(queue: AffinityQueue, slots: int) -> dict[int, list[str]]:
    """Slots take turns (as if every run took equally long) until nothing is ready."""
    taken: dict[int, list[str]] = {slot: [] for slot in range(slots)}
    while len(queue):
        for slot in range(slots):
            task = queue.take(slot)
            if task is not None:
                taken[slot].append(task.key)
    return taken


def test_recording_runs_come_first():
    queue = _queue(Task("MS5/r1", 0, "MS5"), Task("r2", -1), Task("r1", -2))
    assert [queue.take(0).key, queue.take(0).key, queue.take(0).key] == ["r1", "r2", "MS5/r1"]


def test_each_sorter_stays_on_the_slot_that_compiled_it():
    # Plan order is sorter-major, as a spec lists them: run_sorter_jobs would hand out
    # MS5 to both processes first, then SC2 to both (each compiling both sorters).
    plan = [("MS5", r) for r in "1234"] + [("SC2", r) for r in "1234"]
    queue = _queue(*(Task(f"{s}/r{r}", i, s) for i, (s, r) in enumerate(plan)))
    assert _drain(queue, 2) == {
        0: ["MS5/r1", "MS5/r2", "MS5/r3", "MS5/r4"],
        1: ["SC2/r1", "SC2/r2", "SC2/r3", "SC2/r4"],
    }


def test_a_slot_is_never_idle_while_work_is_ready():
    queue = _queue(*(Task(f"MS5/r{i}", i, "MS5") for i in range(4)))
    assert _drain(queue, 2) == {0: ["MS5/r0", "MS5/r2"], 1: ["MS5/r1", "MS5/r3"]}
    # A slot whose own sorter ran out takes an unseen sorter first, then anyone's.
    queue = _queue(Task("A/1", 0, "A"), Task("B/1", 1, "B"), Task("C/1", 2, "C"), Task("B/2", 3, "B"))
    assert queue.take(0).key == "A/1"
    assert queue.take(1).key == "B/1"
    assert queue.take(0).key == "C/1", "C: compiled by no slot yet"
    assert queue.take(0).key == "B/2", "then B, although slot 1 has it warm"
    assert queue.take(1) is None


def test_sorts_added_later_still_follow_affinity():
    queue = _queue(Task("r1", -2), Task("r2", -1))
    assert queue.take(0).key == "r1" and queue.take(1).key == "r2"
    for i, key in enumerate(["SC2/r1", "MS5/r1"]):
        queue.add(Task(key, i * 2, key.split("/")[0]))
    assert queue.take(1).key == "SC2/r1" and queue.take(0).key == "MS5/r1"
    for i, key in enumerate(["SC2/r2", "MS5/r2"]):
        queue.add(Task(key, i * 2 + 1, key.split("/")[0]))
    assert queue.take(0).key == "MS5/r2" and queue.take(1).key == "SC2/r2"
