"""Problems from Josz & Li, "Certifying the absence of spurious local minima at
infinity", SIAM J. Optim. 33 (2023)."""

from __future__ import annotations

import jax.numpy as jnp

from .._problem import Problem, Uniform
from ._registry import register


@register("matrix-completion")
def matrix_completion(low: float = -1.0, high: float = 1.0) -> Problem:
    r"""Example 1.1 / Figure 1: a matrix completion instance with a spurious local
    minimum at infinity.

    $f(x_1, x_2, y_1, y_2) = (x_1 y_1 - 1)^2 + (x_2 y_1 - 1)^2 + (x_2 y_2 - 1)^2$.

    Critical values: 0 (global minima $C_1$), 2 (strict saddles $C_2, C_3$),
    3 (the origin, a strict saddle). No spurious local minima, yet gradient methods from
    uniform starts in $[-1, 1]^4$ get stuck at infinity, where $f \to 1$ and
    $\|x\| \sim t^{1/4}$ (the paper's Figure 1: 3 of 10 trials).
    """

    def f(z):
        x1, x2, y1, y2 = z[0], z[1], z[2], z[3]
        return (x1 * y1 - 1) ** 2 + (x2 * y1 - 1) ** 2 + (x2 * y2 - 1) ** 2

    return Problem(
        f,
        dim=4,
        sampler=Uniform(low, high),
        name="matrix-completion",
        global_infimum=0.0,
        facts={
            "equation": "Example 1.1",
            "critical_values": [0.0, 2.0, 3.0],
            "spurious_local_minima": False,
            "value_at_infinity": 1.0,
            "bounded_trajectories": False,
        },
        description="Example 1.1: (x1 y1 - 1)^2 + (x2 y1 - 1)^2 + (x2 y2 - 1)^2",
    )


def _sigmoid(z):
    return 1.0 / (1.0 + jnp.exp(-z))


@register("relu-flat")
def relu_flat(low: float = -2.0, high: float = 2.0) -> Problem:
    r"""Figure 2: $f(x_1, x_2) = (x_2 \max(x_1, 0) - 1)^2$, a one-neuron ReLU network.

    Nonsmooth. Devoid of spurious valleys, yet the flat region $\{x_1 < 0\}$ (where
    $f = 1$ and $0 \in \partial f$) is a spurious setwise local minimum. Starts with
    $x_1 < 0$ are Clarke-critical at once; starts with $x_1 > 0$ reach $f = 0$ on the
    hyperbola $x_1 x_2 = 1$ (with $x_1^2 - x_2^2$ conserved).
    """

    def f(z):
        return (z[1] * jnp.maximum(z[0], 0.0) - 1.0) ** 2

    return Problem(
        f, dim=2, sampler=Uniform(low, high), name="relu-flat", global_infimum=0.0,
        nonsmooth=True,
        facts={
            "equation": "Figure 2",
            "critical_values": [0.0, 1.0],
            "spurious_local_minima": True,
            "bounded_trajectories": True,
        },
        description="Figure 2: (x2 max(x1, 0) - 1)^2",
    )


@register("sigmoid-two-points")
def sigmoid_two_points(
    x1: float = 1.0, y1: float = 1.0, x2: float = -1.0, y2: float = -3.0,
    low: float = -4.0, high: float = 4.0,
) -> Problem:
    r"""Figure 3: one sigmoid neuron fitted to two points $(x_i, y_i)$,
    $f(w_1, w_2) = \tfrac12\sum_i (w_2\,\sigma(w_1 x_i) - y_i)^2$.

    With the paper's data $(1, 1), (-1, -3)$:
    $\tfrac12[(w_2\sigma(w_1) - 1)^2 + (w_2\sigma(-w_1) + 3)^2]$. Two values at
    infinity: $\tfrac12$ as $w_1 \to -\infty$ (the infimum) and $\tfrac92$ as
    $w_1 \to +\infty$, a spurious local minimum at infinity.
    """
    xs = jnp.array([x1, x2])
    ys = jnp.array([y1, y2])

    def f(w):
        return 0.5 * jnp.sum((w[1] * _sigmoid(w[0] * xs) - ys) ** 2)

    paper = (x1, y1, x2, y2) == (1.0, 1.0, -1.0, -3.0)
    return Problem(
        f, dim=2, sampler=Uniform(low, high), name="sigmoid-two-points",
        global_infimum=0.5 if paper else None,
        facts={
            "equation": "Figure 3",
            "values_at_infinity": [0.5, 4.5] if paper else None,
            "spurious_local_minima_at_infinity": True if paper else None,
            "bounded_trajectories": False if paper else None,
        },
        description="Figure 3: 1/2 sum_i (w2 sigma(w1 x_i) - y_i)^2",
    )


@register("infinitely-many-critical-values")
def infinitely_many_critical_values(low: float = -7.0, high: float = 7.0) -> Problem:
    r"""Remark 3.2: a $C^1$ function on $\mathbb R$ with infinitely many critical values.

    $f = (x + 4)^2 - 8$ on $x \le -2$; $-x^2$ on $[-2, 0]$;
    $-2^{-k}(x - 2k)^{2^{k+1}} - 3(1 - 2^{-k})$ on $[2k, 2k+1]$;
    $2^{-k}(x - 2k)^{2^{k+1}} - 3(1 - 2^{-k})$ on $[2k - 1, 2k]$ ($k \ge 1$).
    Critical points $-4$ (value $-8$, the global minimum) and $2k$ (values
    $-3(1 - 2^{-k})$). Bounded trajectories, no spurious local minimum, yet
    $[a, \infty)$ is a spurious local minimum at infinity: the finiteness of critical
    values in Theorem 1.2 cannot be dropped.
    """

    def f(z):
        x = z[0]
        # k of the piece [2k - 1, 2k + 1] containing x (for x >= 0).
        k = jnp.floor((jnp.maximum(x, 0.0) + 1.0) / 2.0)
        u = x - 2.0 * k
        p = 2.0 ** (k + 1.0)
        mag = 2.0**-k * jnp.abs(u) ** p  # p is even: |u|^p = u^p
        right = jnp.where(u >= 0, -mag, mag) - 3.0 * (1.0 - 2.0**-k)
        return jnp.where(x <= -2.0, (x + 4.0) ** 2 - 8.0, jnp.where(x <= 0.0, -(x**2), right))

    return Problem(
        f, dim=1, sampler=Uniform(low, high), name="infinitely-many-critical-values",
        global_infimum=-8.0,
        facts={
            "equation": "Remark 3.2",
            "critical_values": "-8 and -3(1 - 2^-k), k = 0, 1, 2, ...",
            "bounded_trajectories": True,
            "finitely_many_critical_values": False,
        },
        description="Remark 3.2: C^1, bounded trajectories, infinitely many critical values",
    )


@register("unbounded-trajectory")
def unbounded_trajectory(low: float = -3.0, high: float = 3.0) -> Problem:
    r"""Remark 3.3: $f(x) = x^2(1 + x^2)/(1 + x^4)$.

    Global minimum 0 at $x = 0$, global maxima at $\pm(\sqrt2 - 1)^{-1/2} \approx 1.554$,
    $f \to 1$ as $|x| \to \infty$. The flow from $x_0 = 2$ is unbounded,
    $g(x(t)) = 2t + g(2)$ with
    $g(x) = x^4/4 + x^2 + (2+\sqrt2)\log(x^2 - \sqrt2 - 1) + (2-\sqrt2)\log(x^2 + \sqrt2 - 1)
    - \log x$, so $x(t) \sim (8t)^{1/4}$.
    """

    def f(z):
        x2 = z[0] ** 2
        return x2 * (1.0 + x2) / (1.0 + x2**2)

    return Problem(
        f, dim=1, sampler=Uniform(low, high), name="unbounded-trajectory", global_infimum=0.0,
        facts={
            "equation": "Remark 3.3",
            "critical_values": [0.0, 0.5 * (1 + 2**0.5)],
            "value_at_infinity": 1.0,
            "bounded_trajectories": False,
        },
        description="Remark 3.3: x^2 (1 + x^2) / (1 + x^4)",
    )


def _rng(seed):
    import numpy as np

    return np.random.default_rng(seed)


@register("deep-linear")
def deep_linear(
    depth: int = 3,
    widths: tuple | list | None = None,
    n_samples: int = 6,
    rank_x: int | None = None,
    seed: int = 0,
    init_scale: float = 1.0,
) -> Problem:
    r"""(4.1) Deep linear network $f = \tfrac12\|W_L\cdots W_1 X - Y\|_F^2$.

    `widths` $= (d_0, \dots, d_L)$ (default `(3, 3, ..., 2)` with $L$ = `depth`);
    $X \in \mathbb R^{d_0\times n}$ has rank `rank_x` (default full; smaller gives the
    rank-deficient case that Proposition 4.1 covers), $Y$ Gaussian. Proposition 4.1:
    bounded gradient trajectories, for any $X$. The balancedness
    $W_{i+1}^T W_{i+1} - W_i W_i^T$ is conserved along the flow. Starts:
    $\mathcal N(0, \text{init\_scale}^2)$ entries.
    """
    import numpy as np

    from .._problem import Normal

    if widths is None:
        widths = (3,) * depth + (2,)
    widths = tuple(int(w) for w in widths)
    if len(widths) != depth + 1:
        raise ValueError(f"deep-linear: widths needs depth + 1 = {depth + 1} entries, got {widths}.")
    rng = _rng(seed)
    d0, dl = widths[0], widths[-1]
    rank_x = min(d0, n_samples) if rank_x is None else int(rank_x)
    if not 0 <= rank_x <= min(d0, n_samples):
        raise ValueError(f"deep-linear: rank_x must lie in [0, {min(d0, n_samples)}], got {rank_x}.")
    x = rng.normal(size=(d0, rank_x)) @ rng.normal(size=(rank_x, n_samples))
    y = rng.normal(size=(dl, n_samples))
    xj, yj = jnp.asarray(x), jnp.asarray(y)

    def f(ws):
        prod = ws[0] @ xj
        for w in ws[1:]:
            prod = w @ prod
        return 0.5 * jnp.sum((prod - yj) ** 2)

    example = [jnp.zeros((widths[i + 1], widths[i])) for i in range(depth)]
    # The infimum over all products: least squares of Y on the row space of X, when no
    # hidden layer is narrower than min(d0, dL); otherwise left unknown.
    inf = None
    if min(widths[1:-1], default=dl) >= min(d0, dl):
        proj = np.linalg.pinv(x) @ x
        inf = 0.5 * float(np.sum((y - y @ proj) ** 2))
    return Problem(
        f, example=example, sampler=Normal(0.0, init_scale), name="deep-linear",
        global_infimum=inf,
        facts={
            "equation": "(4.1)",
            "proposition": "4.1",
            "bounded_trajectories": True,
            "spurious_local_minima": False,
            "widths": list(widths),
            "rank_x": rank_x,
            "X": x.tolist(),
            "Y": y.tolist(),
        },
        description=f"(4.1) deep linear network, widths {widths}, rank X = {rank_x}",
    )


@register("deep-sigmoid-1d")
def deep_sigmoid_1d(depth: int = 3, x: float = 1.0, y: float = 0.5, low: float = -2.0, high: float = 2.0) -> Problem:
    r"""(4.6) One-dimensional deep sigmoid network
    $f(w_1, \dots, w_L) = \tfrac12(w_L\,\sigma(w_{L-1}\cdots\sigma(w_1 x)) - y)^2$.

    Proposition 4.2: bounded gradient trajectories; every critical point is a global
    minimum (value 0). For $L = 2$, $w_1 x + e^{w_1 x} - x^2 w_2^2/2$ is conserved.
    """
    if depth < 2:
        raise ValueError(f"deep-sigmoid-1d: depth must be >= 2, got {depth}.")

    def f(w):
        p = jnp.asarray(x, w.dtype)
        for i in range(depth - 1):
            p = _sigmoid(w[i] * p)
        return 0.5 * (w[depth - 1] * p - y) ** 2

    return Problem(
        f, dim=depth, sampler=Uniform(low, high), name="deep-sigmoid-1d", global_infimum=0.0,
        facts={
            "equation": "(4.6)",
            "proposition": "4.2",
            "bounded_trajectories": True,
            "spurious_local_minima": False,
            "x": x,
            "y": y,
        },
        description=f"(4.6) 1-D sigmoid network of depth {depth}, data ({x}, {y})",
    )


@register("sigmoid-example-4-3")
def sigmoid_example_4_3(low: float = -3.0, high: float = 3.0) -> Problem:
    r"""(4.9) Example 4.3: $\tfrac12[(w_2\sigma(w_1) - 1)^2 + (w_2\sigma(-w_1) + 1)^2]$.

    Only critical point $(0, 0)$, a strict saddle with value 1. The infimum $\tfrac12$
    is approached as $w_1 \to \pm\infty$; every trajectory from $f(x_0) < 1$ is
    unbounded ($|w_1| \sim \log t$).
    """

    def f(w):
        return 0.5 * ((w[1] * _sigmoid(w[0]) - 1.0) ** 2 + (w[1] * _sigmoid(-w[0]) + 1.0) ** 2)

    return Problem(
        f, dim=2, sampler=Uniform(low, high), name="sigmoid-example-4-3", global_infimum=0.5,
        facts={
            "equation": "(4.9)",
            "critical_values": [1.0],
            "value_at_infinity": 0.5,
            "bounded_trajectories": False,
        },
        description="Example 4.3: two-point sigmoid network, all trajectories below 1 escape",
    )


@register("matrix-sensing")
def matrix_sensing(
    n1: int = 4, n2: int = 4, r: int = 2, m: int = 30, rank_m: int | None = None,
    seed: int = 0, init_scale: float = 1.0,
) -> Problem:
    r"""(4.10) Matrix sensing $f(X, Y) = \frac{1}{2m}\sum_i (\langle A_i, XY^T\rangle_F - b_i)^2$.

    $A_i$ Gaussian, $b_i = \langle A_i, M\rangle$ with $M$ of rank `rank_m` (default
    `r`), $X \in \mathbb R^{n_1\times r}$, $Y \in \mathbb R^{n_2\times r}$.
    Proposition 4.4: bounded trajectories when the sensing operator is lower bounded
    on rank-$r$ matrices (true for Gaussian $A_i$ with $m \ge n_1 n_2$ almost surely).
    $X^TX - Y^TY$ is conserved along the flow.
    """
    import numpy as np

    from .._problem import Normal

    rng = _rng(seed)
    rank_m = r if rank_m is None else int(rank_m)
    a = rng.normal(size=(m, n1, n2))
    mstar = rng.normal(size=(n1, rank_m)) @ rng.normal(size=(rank_m, n2))
    b = np.einsum("kij,ij->k", a, mstar)
    aj, bj = jnp.asarray(a), jnp.asarray(b)

    def f(p):
        z = p["X"] @ p["Y"].T
        return jnp.sum((jnp.einsum("kij,ij->k", aj, z) - bj) ** 2) / (2 * m)

    return Problem(
        f, example={"X": jnp.zeros((n1, r)), "Y": jnp.zeros((n2, r))},
        sampler=Normal(0.0, init_scale), name="matrix-sensing",
        global_infimum=0.0 if rank_m <= r else None,
        facts={
            "equation": "(4.10)",
            "proposition": "4.4",
            "bounded_trajectories": True if m >= n1 * n2 else None,
            "n1": n1, "n2": n2, "r": r, "m": m, "rank_m": rank_m,
        },
        description=f"(4.10) matrix sensing {n1}x{n2}, r = {r}, m = {m}",
    )


@register("nonsmooth-factorization")
def nonsmooth_factorization(
    m: int = 3, n: int = 3, r: int = 1, rank_m: int = 1, seed: int = 0, init_scale: float = 1.0,
) -> Problem:
    r"""(4.11) Nonsmooth matrix factorization $f(X, Y) = \|XY^T - M\|_1$; with
    $r = \operatorname{rank} M = 1$ and all $M_{ij} \ne 0$ this is (4.14).

    Proposition 4.5: bounded subgradient trajectories for any $M$ and $r$; along them
    $X^TX - Y^TY$ is constant and
    $\|X\|_2^4 + \|Y\|_2^4 \le \|X_0^TX_0 - Y_0^TY_0\|_F^2 + 2mn(\|X_0Y_0^T - M\|_1 + \|M\|_1)^2$.
    Nonsmooth: flows use the minimal-norm Clarke subgradient.
    """
    from .._problem import Normal

    rng = _rng(seed)
    mm = rng.normal(size=(m, rank_m)) @ rng.normal(size=(rank_m, n))
    mj = jnp.asarray(mm)

    def f(p):
        return jnp.sum(jnp.abs(p["X"] @ p["Y"].T - mj))

    return Problem(
        f, example={"X": jnp.zeros((m, r)), "Y": jnp.zeros((n, r))},
        sampler=Normal(0.0, init_scale), name="nonsmooth-factorization",
        global_infimum=0.0 if rank_m <= r else None,
        nonsmooth=True,
        facts={
            "equation": "(4.11)" if (r, rank_m) != (1, 1) else "(4.14)",
            "proposition": "4.5",
            "bounded_trajectories": True,
            "m": m, "n": n, "r": r, "rank_m": rank_m,
            "M": mm.tolist(),
        },
        description=f"(4.11) ||X Y^T - M||_1, {m}x{n}, r = {r}, rank M = {rank_m}",
    )
