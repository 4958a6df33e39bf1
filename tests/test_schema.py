"""The trajectory table's column families and reading points back."""

import numpy as np
import pytest

from jaxflow._schema import (
    checkpoint_state_columns,
    checkpoint_states,
    column,
    dim_of,
    final_points,
    start_columns,
    start_points,
    value_dtype,
)


def test_families_round_trip():
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(5, 3)).astype(np.float32)
    cp_x = rng.normal(size=(5, 4, 3))
    table = {"f": np.zeros(5, np.float32), **start_columns(x0), **checkpoint_state_columns(cp_x)}
    table.update({f"x_{j}": x0[:, j] + 1 for j in range(3)})
    assert sorted(start_columns(x0)) == ["start_0", "start_1", "start_2"]
    assert dim_of(table) == 3
    np.testing.assert_array_equal(start_points(table), x0)
    np.testing.assert_array_equal(final_points(table), x0 + 1)
    np.testing.assert_array_equal(final_points(table, [1, 3]), x0[[1, 3]] + 1)
    np.testing.assert_array_equal(checkpoint_states(table), cp_x)
    assert value_dtype(table) == np.float32
    assert final_points({"f": np.zeros(2)}) is None and dim_of({}) == 0
    assert value_dtype({"f": np.zeros(2, np.int32)}) == np.float64


def test_missing_column():
    assert column({"a": [1]}, "a").tolist() == [1]
    assert column({}, "a", np.zeros(1)).tolist() == [0.0]
    with pytest.raises(KeyError, match="trajectory_table"):
        column({}, "a")
