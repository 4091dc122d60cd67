"""The `sample` stage's grouping of examples into batches of whole sessions."""

from __future__ import annotations

from pipelines.sample import session_groups


def _examples(sizes: dict[str, int]) -> list[dict]:
    return [{"session": s, "example": i} for s, n in sizes.items() for i in range(n)]


def test_groups_hold_whole_sessions_in_sorted_order_up_to_the_batch_size():
    examples = _examples({"b/2": 2, "a/1": 2, "c/3": 2, "d/4": 2, "e/5": 2})
    groups = session_groups(examples, per_group=4)
    assert [[e["session"] for e in g] for g in groups] == [
        ["a/1", "a/1", "b/2", "b/2"],
        ["c/3", "c/3", "d/4", "d/4"],
        ["e/5", "e/5"],
    ]
    assert sum(len(g) for g in groups) == len(examples)


def test_a_session_larger_than_the_batch_is_a_group_of_its_own():
    groups = session_groups(_examples({"a": 1, "b": 5, "c": 1}), per_group=2)
    assert [len(g) for g in groups] == [1, 5, 1]


def test_grouping_does_not_depend_on_input_order():
    examples = _examples({"x": 2, "y": 2, "z": 2})
    shuffled = [examples[i] for i in (4, 1, 5, 0, 3, 2)]
    assert [[e["session"] for e in g] for g in session_groups(shuffled, 4)] == [
        ["x", "x", "y", "y"],
        ["z", "z"],
    ]
