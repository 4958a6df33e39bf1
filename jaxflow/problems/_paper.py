"""Problems from Josz & Li, "Certifying the absence of spurious local minima at
infinity", SIAM J. Optim. 33 (2023).

Every factory returns a `jaxflow.Problem` whose `facts` hold what the paper states
(`equation`, `global_infimum` on the problem itself, `critical_values`,
`values_at_infinity`, `bounded_trajectories`, `spurious_local_minima`,
`spurious_local_minima_at_infinity`); problems built from data also carry the data as
numpy arrays in `problem.data`.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from .._problem import Normal, Problem, Uniform
from ._registry import check_box, check_int, check_real, on_device, register, zeros


def _sigmoid(z):
    return 1.0 / (1.0 + jnp.exp(-z))


def _rng(seed, problem: str):
    return np.random.default_rng(check_int(seed, "seed", problem, minimum=0))


@register("matrix-completion")
def matrix_completion(low: float = -1.0, high: float = 1.0) -> Problem:
    r"""Example 1.1 / Figure 1: a matrix completion instance with a spurious local
    minimum at infinity.

    $f(x_1, x_2, y_1, y_2) = (x_1 y_1 - 1)^2 + (x_2 y_1 - 1)^2 + (x_2 y_2 - 1)^2$,
    flat coordinates in the order $(x_1, x_2, y_1, y_2)$.

    Critical values: 0 (global minima $C_1$), 2 (strict saddles $C_2, C_3$),
    3 (the origin, a strict saddle). No spurious local minima, yet gradient methods from
    uniform starts in $[-1, 1]^4$ (the default sampler, as in the paper) get stuck at
    infinity, where $f \to 1$ (the paper's Figure 1: 3 of 10 trials of gradient descent
    with step 0.01).

    **Parameters:** `low`, `high`: the box of the uniform sampler.
    """
    low, high = check_box(low, high, "matrix-completion")

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
            "values_at_infinity": [1.0],
            "spurious_local_minima": False,
            "spurious_local_minima_at_infinity": True,
            "bounded_trajectories": False,
            "paper_trapped_fraction": [3, 10],
        },
        description="Example 1.1: (x1 y1 - 1)^2 + (x2 y1 - 1)^2 + (x2 y2 - 1)^2",
    )


@register("relu-flat")
def relu_flat(low: float = -2.0, high: float = 2.0) -> Problem:
    r"""Figure 2: $f(x_1, x_2) = (x_2 \max(x_1, 0) - 1)^2$, a one-neuron ReLU network.

    Nonsmooth (flows use the minimal-norm Clarke subgradient). Devoid of spurious
    valleys, yet the flat half-plane $\{x_1 \le 0\}$ (where $f = 1$ and
    $0 \in \partial f$) is a spurious local minimum at infinity. Clarke critical values:
    0 (the hyperbola $x_1 x_2 = 1$, $x_1 > 0$) and 1 (the half-plane $x_1 \le 0$).
    For $x_1 > 0$ the flow is that of $(x_1 x_2 - 1)^2$, which conserves
    $x_1^2 - x_2^2$: starts with $x_1 > 0$ and ($x_2 > 0$ or $x_1 > |x_2|$) reach
    $f = 0$; starts with $0 < x_1 < -x_2$ slide to the boundary $x_1 = 0$ and stop
    there with $f = 1$; starts with $x_1 \le 0$ do not move. All trajectories are
    bounded.

    **Parameters:** `low`, `high`: the box of the uniform sampler.
    """
    low, high = check_box(low, high, "relu-flat")

    def f(z):
        return (z[1] * jnp.maximum(z[0], 0.0) - 1.0) ** 2

    return Problem(
        f, dim=2, sampler=Uniform(low, high), name="relu-flat", global_infimum=0.0,
        nonsmooth=True,
        facts={
            "equation": "Figure 2",
            "critical_values": [0.0, 1.0],
            "spurious_local_minima": True,
            "spurious_local_minima_at_infinity": True,
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

    With the paper's data $(1, 1), (-1, -3)$ (the defaults):
    $\tfrac12[(w_2\sigma(w_1) - 1)^2 + (w_2\sigma(-w_1) + 3)^2]$. Its only critical
    point is the strict saddle $(\log 3, 0)$ with value 5. Two values at infinity:
    $\tfrac12$ as $w_1 \to -\infty$ (the infimum, not attained) and $\tfrac92$ as
    $w_1 \to +\infty$, $w_2 \to 1$: a spurious local minimum at infinity (the set $S$ of
    Figure 3).

    **Parameters:** the data `x1, y1, x2, y2`; `low`, `high`: the box of the uniform
    sampler.
    """
    name = "sigmoid-two-points"
    x1, y1, x2, y2 = (check_real(v, k, name) for k, v in
                      (("x1", x1), ("y1", y1), ("x2", x2), ("y2", y2)))
    low, high = check_box(low, high, name)
    xs = on_device([x1, x2])
    ys = on_device([y1, y2])

    def f(w):
        # The data in the starts' dtype: float32 runs stay float32 with x64 on.
        x, y = xs.astype(w.dtype), ys.astype(w.dtype)
        return 0.5 * jnp.sum((w[1] * _sigmoid(w[0] * x) - y) ** 2)

    paper = (x1, y1, x2, y2) == (1.0, 1.0, -1.0, -3.0)
    return Problem(
        f, dim=2, sampler=Uniform(low, high), name=name,
        global_infimum=0.5 if paper else None,
        facts={
            "equation": "Figure 3",
            "critical_values": [5.0] if paper else None,
            "values_at_infinity": [0.5, 4.5] if paper else None,
            "spurious_local_minima": False if paper else None,
            "spurious_local_minima_at_infinity": True if paper else None,
            "bounded_trajectories": False if paper else None,
        },
        description=f"Figure 3: 1/2 sum_i (w2 sigma(w1 x_i) - y_i)^2, data "
        f"({x1:g}, {y1:g}), ({x2:g}, {y2:g})",
    )


@register("infinitely-many-critical-values")
def infinitely_many_critical_values(low: float = -7.0, high: float = 7.0) -> Problem:
    r"""Remark 3.2 / Figure 4: a $C^1$ function on $\mathbb R$ with infinitely many
    critical values.

    $f = (x + 4)^2 - 8$ on $x \le -2$; $-x^2$ on $[-2, 0]$;
    $-2^{-k}(x - 2k)^{2^{k+1}} - 3(1 - 2^{-k})$ on $[2k, 2k+1]$ ($k \ge 0$);
    $2^{-k}(x - 2k)^{2^{k+1}} - 3(1 - 2^{-k})$ on $[2k - 1, 2k]$ ($k \ge 1$).
    Critical points $-4$ (value $-8$, the global minimum) and $2k$ (values
    $-3(1 - 2^{-k})$; $x = 0$ is a local maximum, the others are inflection points).
    A start in $(2k, 2k + 2]$ converges to $2k + 2$: bounded trajectories and no
    spurious local minimum, yet $[a, \infty)$ is a spurious local minimum at infinity
    ($f \to -3$): the finiteness of critical values in Theorem 1.2 cannot be dropped.

    **Parameters:** `low`, `high`: the box of the uniform sampler (Figure 4 plots
    $[-7, 7]$).
    """
    low, high = check_box(low, high, "infinitely-many-critical-values")

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
            "critical_points": "-4 and 2k, k = 0, 1, 2, ...",
            "critical_values": "-8 and -3(1 - 2^-k), k = 0, 1, 2, ...",
            "values_at_infinity": [-3.0],
            "finitely_many_critical_values": False,
            "spurious_local_minima": False,
            "spurious_local_minima_at_infinity": True,
            "bounded_trajectories": True,
        },
        description="Remark 3.2: C^1, bounded trajectories, infinitely many critical values",
    )


@register("unbounded-trajectory")
def unbounded_trajectory(low: float = -3.0, high: float = 3.0) -> Problem:
    r"""Remark 3.3: $f(x) = x^2(1 + x^2)/(1 + x^4)$.

    Global minimum 0 at $x = 0$, global maxima $(1 + \sqrt2)/2$ at
    $\pm(\sqrt2 - 1)^{-1/2} \approx \pm 1.554$, $f \to 1$ as $|x| \to \infty$. Every
    flow from $|x_0| > (\sqrt2 - 1)^{-1/2}$ is unbounded; from $x_0 = 2$ it satisfies
    $g(x(t)) = 2t + g(2)$ with
    $g(x) = x^4/4 + x^2 + (2+\sqrt2)\log(x^2 - \sqrt2 - 1) + (2-\sqrt2)\log(x^2 + \sqrt2 - 1)
    - \log x$, so $x(t) \sim (8t)^{1/4}$.

    **Parameters:** `low`, `high`: the box of the uniform sampler.
    """
    low, high = check_box(low, high, "unbounded-trajectory")

    def f(z):
        x2 = z[0] ** 2
        return x2 * (1.0 + x2) / (1.0 + x2**2)

    return Problem(
        f, dim=1, sampler=Uniform(low, high), name="unbounded-trajectory", global_infimum=0.0,
        facts={
            "equation": "Remark 3.3",
            "critical_values": [0.0, 0.5 * (1 + math.sqrt(2))],
            "values_at_infinity": [1.0],
            "spurious_local_minima": False,
            "spurious_local_minima_at_infinity": True,
            "bounded_trajectories": False,
        },
        description="Remark 3.3: x^2 (1 + x^2) / (1 + x^4)",
    )


@register("deep-linear")
def deep_linear(
    depth: int = 3,
    widths: tuple | list | None = None,
    n_samples: int = 6,
    rank_x: int | None = None,
    X=None,
    Y=None,
    seed: int = 0,
    init_scale: float = 1.0,
) -> Problem:
    r"""(4.1) Deep linear network $f(W_1, \dots, W_L) = \tfrac12\|W_L\cdots W_1 X - Y\|_F^2$.

    The variables are the list $[W_1, \dots, W_L]$, $W_i \in \mathbb R^{d_i\times d_{i-1}}$.
    Proposition 4.1: bounded gradient trajectories for any data $X$, including
    rank-deficient $X$; along them the balancedness
    $W_{i+1}^T W_{i+1} - W_i W_i^T$ is conserved, and so is $W_1 U_2$ where the
    columns of $U_2$ span the orthogonal complement of the range of $X$ (the proof's
    $\bar W_{12}$). No spurious local minima; the global infimum (reduced-rank least
    squares) is attained.

    **Parameters:**

    - `depth` $L \ge 1$; `widths` $= (d_0, \dots, d_L)$ (default $(3, 3, \dots, 3, 2)$,
      or $d_0$, $d_L$ from the given data);
    - `X` ($d_0\times n$), `Y` ($d_L\times n$): the data; by default drawn with `seed`:
      $X$ Gaussian of rank `rank_x` (default full; smaller gives the rank-deficient case)
      with `n_samples` columns, $Y$ Gaussian;
    - `init_scale`: starts have $\mathcal N(0, \text{init\_scale}^2)$ entries.

    `problem.data` holds `X` and `Y`.
    """
    name = "deep-linear"
    depth = check_int(depth, "depth", name)
    rng = _rng(seed, name)
    init_scale = check_real(init_scale, "init_scale", name, positive=True)
    if X is not None:
        x = np.asarray(X, dtype=np.float64)
        if x.ndim != 2 or x.size == 0 or not np.all(np.isfinite(x)):
            raise ValueError(f"{name}: `X` must be a finite (d0, n) matrix, got shape {x.shape}.")
        if rank_x is not None:
            raise ValueError(f"{name}: give `rank_x` or `X`, not both (the rank of X is fixed).")
    else:
        x = None
    if widths is None:
        d0 = 3 if x is None else x.shape[0]
        dl = 2 if Y is None else np.asarray(Y).shape[0]
        widths = (d0,) + (max(d0, dl),) * (depth - 1) + (dl,)
    if not isinstance(widths, (tuple, list)):
        raise TypeError(
            f"{name}: `widths` must be a tuple of {depth + 1} integers, got {widths!r}."
        )
    widths = tuple(check_int(w, "widths", name) for w in widths)
    if len(widths) != depth + 1:
        raise ValueError(
            f"{name}: `widths` needs depth + 1 = {depth + 1} entries (d0, ..., dL), got {widths}."
        )
    d0, dl = widths[0], widths[-1]
    if x is None:
        n_samples = check_int(n_samples, "n_samples", name)
        full = min(d0, n_samples)
        rank_x = full if rank_x is None else check_int(rank_x, "rank_x", name, minimum=0)
        if rank_x > full:
            raise ValueError(
                f"{name}: `rank_x` must lie in [0, min(d0, n_samples)] = [0, {full}], "
                f"got {rank_x}."
            )
        x = rng.normal(size=(d0, rank_x)) @ rng.normal(size=(rank_x, n_samples))
    elif x.shape[0] != d0:
        raise ValueError(f"{name}: `X` has {x.shape[0]} rows but widths[0] = {d0}.")
    n_samples = x.shape[1]
    if Y is None:
        y = rng.normal(size=(dl, n_samples))
    else:
        y = np.asarray(Y, dtype=np.float64)
        if y.shape != (dl, n_samples) or not np.all(np.isfinite(y)):
            raise ValueError(
                f"{name}: `Y` must be a finite ({dl}, {n_samples}) matrix (d_L x columns of X), "
                f"got shape {y.shape}."
            )
    rank_x = int(np.linalg.matrix_rank(x))
    xj, yj = on_device(x), on_device(y)

    def f(ws):
        dtype = ws[0].dtype  # the data in the starts' dtype (float32 runs stay float32)
        prod = ws[0] @ xj.astype(dtype)
        for w in ws[1:]:
            prod = w @ prod
        return 0.5 * jnp.sum((prod - yj.astype(dtype)) ** 2)

    # Reduced-rank least squares: W_L...W_1 X ranges over the matrices Z with rank Z <= h
    # (narrowest layer) whose rows lie in the row space of X, so
    # inf f = (||Y (I - P)||^2 + sum_{j > h} sigma_j(Y P)^2) / 2, P the projector on it.
    h = min(widths)
    proj = np.linalg.pinv(x) @ x
    sv = np.linalg.svd(y @ proj, compute_uv=False)
    inf = 0.5 * (float(np.sum((y - y @ proj) ** 2)) + float(np.sum(sv[h:] ** 2)))
    example = [zeros((widths[i + 1], widths[i])) for i in range(depth)]
    return Problem(
        f, example=example, sampler=Normal(0.0, init_scale), name=name,
        global_infimum=inf,
        facts={
            "equation": "(4.1)",
            "proposition": "4.1",
            "bounded_trajectories": True,
            "spurious_local_minima": False,
            "spurious_local_minima_at_infinity": False,
            "conserved": "W_{i+1}^T W_{i+1} - W_i W_i^T; W_1 U_2 (U_2 spans range(X)^perp)",
            "widths": list(widths),
            "rank_x": rank_x,
        },
        description=f"(4.1) deep linear network, widths {widths}, rank X = {rank_x}",
        data={"X": x, "Y": y},
    )


@register("deep-sigmoid-1d")
def deep_sigmoid_1d(
    depth: int = 3, x: float = 1.0, y: float = 0.5, low: float = -2.0, high: float = 2.0
) -> Problem:
    r"""(4.6) One-dimensional deep sigmoid network
    $f(w_1, \dots, w_L) = \tfrac12(w_L\,\sigma(w_{L-1}\cdots\sigma(w_1 x)) - y)^2$.

    Proposition 4.2: bounded gradient trajectories; every critical point is a global
    minimum (value 0), so no spurious local minima at infinity. For $L = 2$ (and in
    general for the first two layers, given $w_2$) the proof uses that
    $w_1 x + e^{w_1 x} - x^2 w_2^2/2$ is conserved along the flow, and that
    $w_{L-1} - w_L^2/2$ is monotone once $\dot w_L w_L$ keeps its sign ((4.8)).

    **Parameters:** `depth` $L \ge 2$; the data point `x`, `y`; `low`, `high`: the box
    of the uniform sampler.
    """
    name = "deep-sigmoid-1d"
    depth = check_int(depth, "depth", name, minimum=2)
    x = check_real(x, "x", name)
    y = check_real(y, "y", name)
    low, high = check_box(low, high, name)

    def f(w):
        p = jnp.asarray(x, w.dtype)
        for i in range(depth - 1):
            p = _sigmoid(w[i] * p)
        return 0.5 * (w[depth - 1] * p - y) ** 2

    return Problem(
        f, dim=depth, sampler=Uniform(low, high), name=name, global_infimum=0.0,
        facts={
            "equation": "(4.6)",
            "proposition": "4.2",
            "critical_values": [0.0],
            "bounded_trajectories": True,
            "spurious_local_minima": False,
            "spurious_local_minima_at_infinity": False,
            "conserved": "w1 x + exp(w1 x) - x^2 w2^2 / 2" if depth == 2 else None,
            "x": x,
            "y": y,
        },
        description=f"(4.6) 1-D sigmoid network of depth {depth}, data ({x:g}, {y:g})",
    )


@register("sigmoid-example-4-3")
def sigmoid_example_4_3(low: float = -3.0, high: float = 3.0) -> Problem:
    r"""(4.9) Example 4.3: $\tfrac12[(w_2\sigma(w_1) - 1)^2 + (w_2\sigma(-w_1) + 1)^2]$.

    A one-hidden-layer sigmoid network with two data points $(1, 1), (-1, -1)$: the
    conclusion of Proposition 4.2 fails with more than one data point. Only critical
    point $(0, 0)$, a strict saddle with value 1. The infimum $\tfrac12$ is approached as
    $w_1 \to \pm\infty$ with $w_2 \to 1 - 2(1 + e^{2 w_1})^{-1}$; every trajectory from
    $f(x_0) < 1$ is unbounded ($|w_1| \sim \log t$). Here the value at infinity is the
    global infimum: unbounded, but not spurious.

    **Parameters:** `low`, `high`: the box of the uniform sampler.
    """
    low, high = check_box(low, high, "sigmoid-example-4-3")

    def f(w):
        return 0.5 * ((w[1] * _sigmoid(w[0]) - 1.0) ** 2 + (w[1] * _sigmoid(-w[0]) + 1.0) ** 2)

    return Problem(
        f, dim=2, sampler=Uniform(low, high), name="sigmoid-example-4-3", global_infimum=0.5,
        facts={
            "equation": "(4.9)",
            "critical_values": [1.0],
            "values_at_infinity": [0.5],
            "spurious_local_minima": False,
            "spurious_local_minima_at_infinity": False,
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

    $A_i \in \mathbb R^{n_1\times n_2}$ with i.i.d. standard Gaussian entries,
    $b_i = \langle A_i, M\rangle_F$ with $M$ a Gaussian product of rank `rank_m`
    (default `r`), variables `{"X": (n1, r), "Y": (n2, r)}`. Proposition 4.4: bounded
    trajectories when the sensing operator is lower bounded on rank-$r$ matrices,
    $\frac1m\sum_i\langle A_i, \tilde M\rangle^2 \ge c\|\tilde M\|_F^2$ (almost surely
    true with $c > 0$ for Gaussian $A_i$ when $m \ge n_1 n_2$; `facts["lower_bound_c"]`
    is the smallest eigenvalue of $\frac1m\sum_i \operatorname{vec}A_i\operatorname{vec}A_i^T$,
    a valid $c$). Along the flow $X^TX - Y^TY$ is conserved, and the proof's bound
    $\|X^TX\|_F^2 + \|Y^TY\|_F^2 \le \|X_0^TX_0 - Y_0^TY_0\|_F^2 + 2(4f(X_0, Y_0)
    + \frac2m\sum_i b_i^2)/c$ holds (the paper's display writes $2f$ where
    $\frac1m\sum_i 2(\langle A_i, XY^T\rangle - b_i)^2 = 4f$; the slip does not affect
    boundedness).

    **Parameters:** `n1, n2, r, m`, `rank_m`, `seed`; `init_scale`: starts have
    $\mathcal N(0, \text{init\_scale}^2)$ entries. `problem.data` holds `A`, `b`, `M`.
    """
    name = "matrix-sensing"
    n1 = check_int(n1, "n1", name)
    n2 = check_int(n2, "n2", name)
    r = check_int(r, "r", name)
    m = check_int(m, "m", name)
    rank_m = r if rank_m is None else check_int(rank_m, "rank_m", name, minimum=0)
    if rank_m > min(n1, n2):
        raise ValueError(f"{name}: `rank_m` must be <= min(n1, n2) = {min(n1, n2)}, got {rank_m}.")
    init_scale = check_real(init_scale, "init_scale", name, positive=True)
    rng = _rng(seed, name)
    a = rng.normal(size=(m, n1, n2))
    mstar = rng.normal(size=(n1, rank_m)) @ rng.normal(size=(rank_m, n2))
    b = np.einsum("kij,ij->k", a, mstar)
    avec = a.reshape(m, n1 * n2)
    c = float(np.linalg.eigvalsh(avec.T @ avec / m)[0]) if m >= n1 * n2 else 0.0
    aj, bj = on_device(a), on_device(b)

    def f(p):
        z = p["X"] @ p["Y"].T
        dtype = z.dtype  # the data in the starts' dtype (float32 runs stay float32)
        return jnp.sum((jnp.einsum("kij,ij->k", aj.astype(dtype), z) - bj.astype(dtype)) ** 2) / (
            2 * m
        )

    return Problem(
        f, example={"X": zeros((n1, r)), "Y": zeros((n2, r))},
        sampler=Normal(0.0, init_scale), name=name,
        global_infimum=0.0 if rank_m <= r else None,
        facts={
            "equation": "(4.10)",
            "proposition": "4.4",
            "bounded_trajectories": True if c > 0 else None,
            "spurious_local_minima_at_infinity": False if c > 0 and rank_m <= r else None,
            "lower_bound_c": c,
            "conserved": "X^T X - Y^T Y",
            "n1": n1, "n2": n2, "r": r, "m": m, "rank_m": rank_m,
        },
        description=f"(4.10) matrix sensing {n1}x{n2}, r = {r}, m = {m}, rank M = {rank_m}",
        data={"A": a, "b": b, "M": mstar},
    )


@register("nonsmooth-factorization")
def nonsmooth_factorization(
    m: int = 3, n: int = 3, r: int = 1, rank_m: int = 1, seed: int = 0, init_scale: float = 1.0,
) -> Problem:
    r"""(4.11) Nonsmooth matrix factorization $f(X, Y) = \|XY^T - M\|_1$ (entrywise);
    with $r = \operatorname{rank} M = 1$ and all $M_{ij} \ne 0$ this is (4.14).

    $M$ is a Gaussian product of rank `rank_m` (all entries nonzero almost surely),
    variables `{"X": (m, r), "Y": (n, r)}`. Proposition 4.5: bounded subgradient
    trajectories for any $M$ and $r$; along them $X^TX - Y^TY$ is constant and
    $\|X\|_2^4 + \|Y\|_2^4 \le \|X_0^TX_0 - Y_0^TY_0\|_F^2 + 2mn(\|X_0Y_0^T - M\|_1 + \|M\|_1)^2$.
    For (4.14) there are no spurious local minima [Josz & Lai 2022], hence none at
    infinity. Nonsmooth: flows use the minimal-norm Clarke subgradient.

    **Parameters:** `m, n, r`, `rank_m`, `seed`; `init_scale`: starts have
    $\mathcal N(0, \text{init\_scale}^2)$ entries. `problem.data` holds `M`.
    """
    name = "nonsmooth-factorization"
    m = check_int(m, "m", name)
    n = check_int(n, "n", name)
    r = check_int(r, "r", name)
    rank_m = check_int(rank_m, "rank_m", name, minimum=0)
    if rank_m > min(m, n):
        raise ValueError(f"{name}: `rank_m` must be <= min(m, n) = {min(m, n)}, got {rank_m}.")
    init_scale = check_real(init_scale, "init_scale", name, positive=True)
    rng = _rng(seed, name)
    mm = rng.normal(size=(m, rank_m)) @ rng.normal(size=(rank_m, n))
    mj = on_device(mm)

    def f(p):
        return jnp.sum(jnp.abs(p["X"] @ p["Y"].T - mj.astype(p["X"].dtype)))

    rank_one = (r, rank_m) == (1, 1)
    return Problem(
        f, example={"X": zeros((m, r)), "Y": zeros((n, r))},
        sampler=Normal(0.0, init_scale), name=name,
        global_infimum=0.0 if rank_m <= r else None,
        nonsmooth=True,
        facts={
            "equation": "(4.14)" if rank_one else "(4.11)",
            "proposition": "4.5",
            "bounded_trajectories": True,
            "spurious_local_minima": False if rank_one else None,
            "spurious_local_minima_at_infinity": False if rank_one else None,
            "conserved": "X^T X - Y^T Y",
            "m": m, "n": n, "r": r, "rank_m": rank_m,
        },
        description=f"(4.11) ||X Y^T - M||_1, {m}x{n}, r = {r}, rank M = {rank_m}",
        data={"M": mm},
    )
