"""The Wilson interval against textbook values and an independent closed form; the
status table built on it."""

import math

import numpy as np
import pytest

from jaxflow._stats import status_rows, wilson_interval
from jaxflow._status import Status

Z95 = 1.959963984540054


def _wilson_by_quadratic(k, n, z=Z95):
    """The Wilson bounds as the roots in p of (k/n - p)^2 = z^2 p (1 - p) / n."""
    p_hat = k / n
    a = 1 + z * z / n
    b = -(2 * p_hat + z * z / n)
    c = p_hat * p_hat
    root = math.sqrt(b * b - 4 * a * c)
    return (-b - root) / (2 * a), (-b + root) / (2 * a)


@pytest.mark.parametrize(
    "k, n, expected",
    [
        (0, 10, (0.0, 0.2775)),  # Brown, Cai & DasGupta (2001): no successes in 10
        (10, 10, (0.7225, 1.0)),  # the mirror image
        (5, 10, (0.2366, 0.7634)),
        (81, 263, (0.2553, 0.3662)),  # Newcombe (1998), Table II, example (a)
    ],
)
def test_wilson_textbook_values(k, n, expected):
    lo, hi = wilson_interval(k, n)
    assert round(lo, 4) == expected[0] and round(hi, 4) == expected[1], (lo, hi)


@pytest.mark.parametrize("n", [1, 2, 7, 10, 263, 20000])
def test_wilson_matches_quadratic_roots(n):
    for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
        lo, hi = wilson_interval(k, n)
        ref_lo, ref_hi = _wilson_by_quadratic(k, n)
        assert lo == pytest.approx(max(ref_lo, 0.0), abs=1e-12)
        assert hi == pytest.approx(min(ref_hi, 1.0), abs=1e-12)
        # The Wilson centre is pulled towards 1/2, so k/n is not the midpoint (except k/n = 1/2).
        if 2 * k != n:
            assert abs((lo + hi) / 2 - 0.5) < abs(k / n - 0.5)


def test_wilson_edge_cases():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="0 <= k <= n"):
        wilson_interval(11, 10)
    lo, hi = wilson_interval(3, 10, z=2.5758293035489004)  # 99 %
    assert (lo, hi) == pytest.approx(_wilson_by_quadratic(3, 10, 2.5758293035489004), abs=1e-12)


def test_status_rows():
    st = np.asarray([Status.ESCAPING] * 3 + [Status.CONVERGED] * 7, np.int8)
    f = np.arange(10.0)
    rows = status_rows(st, medians={"f": f})
    assert [r["status"] for r in rows] == ["CONVERGED", "ESCAPING"]  # Status order
    conv, esc = rows
    assert conv["count"] == 7 and conv["fraction"] == 0.7
    assert conv["interval"] == wilson_interval(7, 10)
    assert conv["median_f"] == 6.0 and esc["median_f"] == 1.0
    assert set(status_rows(st)[0]) == {"status", "count", "fraction", "interval"}
