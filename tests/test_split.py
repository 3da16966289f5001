"""split.py: a seeded split; the run-keeping helpers are tested through train.py (tests/test_train.py)."""

import pytest

from split import split_indices
from utils import UserError


def test_split_is_seeded_and_disjoint():
    train, test = split_indices(20, 5, seed=0)
    assert (train, test) == split_indices(20, 5, seed=0)
    assert split_indices(20, 5, seed=1) != (train, test)
    assert len(test) == 5 and sorted(train + test) == list(range(20))
    with pytest.raises(UserError, match="--test-size 20"):
        split_indices(20, 20, seed=0)
