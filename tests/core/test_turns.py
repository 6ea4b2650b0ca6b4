from services.core.turns import Turns


def first(turns, waiting, in_flight):
    """The key whose job goes next among `waiting` (keys in their jobs' order of arrival)."""
    return min(enumerate(waiting), key=lambda w: (*turns.order(w[1], in_flight.get(w[1], 0)), w[0]))[1]


def test_the_key_with_fewer_jobs_in_flight_goes_first_whoever_came_first():
    assert first(Turns(), ["flood", "single"], {"flood": 2}) == "single"


def test_among_keys_as_busy_the_one_served_least_recently_goes_first_then_first_come():
    turns = Turns()
    assert first(turns, ["a", "b"], {}) == "a"  # neither served yet: first come
    turns.served("a")
    assert first(turns, ["a", "b"], {}) == "b"  # a was served, b never: b's turn
    turns.served("b")
    assert first(turns, ["b", "a"], {}) == "a"  # a was served before b
