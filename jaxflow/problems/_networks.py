r"""Neural-network families with width and data-size parameters, for sweeps.

`one-hidden-sigmoid` is the setting of the open question at the end of Section 4.2 of
Josz & Li (2023): one-hidden-layer sigmoid networks fitted to $m$ data points, whose
gradient trajectories can be unbounded once $m \ge 2$ (Example 4.3), and for which it is
open whether they stay bounded when the network is overparameterised ($k \ge m$ hidden
units, so that a global minimum is attained).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .._problem import Problem, Uniform
from ._registry import check_box, check_int, on_device, register, zeros

_DATA = ("random", "example-4-3")


def _sigmoid(z):
    return 1.0 / (1.0 + jnp.exp(-z))


@register("one-hidden-sigmoid")
def one_hidden_sigmoid(
    hidden: int = 2, points: int = 2, input_dim: int = 1, seed: int = 0,
    data: str = "random", low: float = -3.0, high: float = 3.0,
) -> Problem:
    r"""One-hidden-layer sigmoid network on $m$ points,
    $f(W, v) = \tfrac12\sum_{i=1}^m (v^T\sigma(W x_i) - y_i)^2$.

    $W \in \mathbb R^{k\times d}$ (`hidden` $= k$ units, `input_dim` $= d$), $v \in
    \mathbb R^k$, no biases, the loss summed as in (4.9). With `data="example-4-3"`
    ($k$ free, $m = 2$, $d = 1$) the data are Example 4.3's $(1, 1), (-1, -1)$; $k = 1$ is
    then exactly `sigmoid-example-4-3` (variables $w_1 = W$, $w_2 = v$): every trajectory
    from $f(x_0) < 1$ escapes, towards the infimum $\tfrac12$. With `data="random"`,
    $x_i \sim \mathcal N(0, I_d)$ and $y_i \sim \mathcal N(0, 1)$ are drawn from `seed`.

    Section 4.2 leaves open whether gradient trajectories are bounded when $k \ge m$. For
    $k \ge m$ and data in general position the global minimum $0$ is attained (the $m$
    features $w \mapsto \sigma(w^T x_i)$ are linearly independent, so some $W$ makes
    $[\sigma(W x_i)]_i$ invertible and $v$ interpolates), so `global_infimum = 0`; for
    $k < m$ it is unknown (`None`). With Example 4.3's data and $k \ge 2$, $f = 0$ is
    attained too ($v_1 = -v_2$, $v_1(\sigma(w_1) - \sigma(w_2)) = 1$).

    **Parameters:** `hidden` $k \ge 1$; `points` $m \ge 1$; `input_dim` $d \ge 1$; `seed`
    of the data; `data`: `"random"` or `"example-4-3"`; `low`, `high`: the box of the
    uniform sampler of the starts (all $k(d + 1)$ coordinates). `problem.data` holds `X`
    ($m\times d$) and `y`.
    """
    name = "one-hidden-sigmoid"
    k = check_int(hidden, "hidden", name)
    m = check_int(points, "points", name)
    d = check_int(input_dim, "input_dim", name)
    seed = check_int(seed, "seed", name, minimum=0)
    low, high = check_box(low, high, name)
    if data not in _DATA:
        raise ValueError(f"{name}: `data` must be one of {list(_DATA)}, got {data!r}.")
    if data == "example-4-3":
        if (m, d) != (2, 1):
            raise ValueError(
                f"{name}: data='example-4-3' has m = 2 points in d = 1 dimension; got "
                f"points={m}, input_dim={d}."
            )
        x = np.array([[1.0], [-1.0]])
        y = np.array([1.0, -1.0])
    else:
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(m, d))
        y = rng.normal(size=m)
    xj, yj = on_device(x), on_device(y)

    def f(p):
        hid = _sigmoid(xj.astype(p["W"].dtype) @ p["W"].T)  # (m, k)
        return 0.5 * jnp.sum((hid @ p["v"] - yj.astype(p["v"].dtype)) ** 2)

    attained = k >= m
    paper = data == "example-4-3" and k == 1
    inf = 0.5 if paper else (0.0 if attained else None)
    return Problem(
        f, example={"W": zeros((k, d)), "v": zeros((k,))},
        sampler=Uniform(low, high), name=name, global_infimum=inf,
        facts={
            "equation": "(4.9)" if paper else "Section 4.2 (open question)",
            "critical_values": [1.0] if paper else None,
            "values_at_infinity": [0.5] if paper else None,
            "bounded_trajectories": False if paper else None,
            "spurious_local_minima_at_infinity": False if paper else None,
            "overparameterised": attained,
            "hidden": k, "points": m, "input_dim": d, "data": data,
        },
        description=f"one-hidden-layer sigmoid network, k = {k} hidden, m = {m} points, "
        f"d = {d} ({'Example 4.3 data' if data == 'example-4-3' else f'random data, seed {seed}'})",
        data={"X": x, "y": y},
    )
