"""How a pass's room is shared: levels in order, owners in turn, each owner's jobs in order."""

from core.scoring_queue import ROUTINE_LEVEL, STAT_LEVEL, JobWork, quotas


def test_stat_fills_first_and_routine_takes_what_is_left() -> None:
    jobs = [JobWork("s", "a", STAT_LEVEL, 3), JobWork("r", "a", ROUTINE_LEVEL, 100)]
    assert quotas(jobs, 8) == {"s": 3, "r": 5}


def test_owners_take_one_image_each_per_turn() -> None:
    jobs = [
        JobWork("a1", "a", ROUTINE_LEVEL, 100),
        JobWork("b1", "b", ROUTINE_LEVEL, 2),
        JobWork("c1", "c", ROUTINE_LEVEL, 100),
    ]
    assert quotas(jobs, 8) == {"a1": 3, "b1": 2, "c1": 3}


def test_an_owner_moves_to_its_next_job_when_one_runs_out() -> None:
    jobs = [JobWork("a1", "a", ROUTINE_LEVEL, 1), JobWork("a2", "a", ROUTINE_LEVEL, 10)]
    assert quotas(jobs, 4) == {"a1": 1, "a2": 3}


def test_more_owners_than_room_serves_them_in_order() -> None:
    jobs = [JobWork(f"j{i}", f"o{i}", ROUTINE_LEVEL, 5) for i in range(5)]
    assert quotas(jobs, 3) == {"j0": 1, "j1": 1, "j2": 1}
