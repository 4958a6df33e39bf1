r"""Losses of models at realistic sizes: matrix completion of an $n\times n$ matrix and
multilayer perceptrons, with data generated from a seed.

Both are smooth (except the ReLU network) and stiff in their escaping valleys, whose
curvature grows like $\|x\|^2$; at $d$ in the hundreds and above, `solver="auto"`
integrates them with the matrix-free `jaxflow.RodasKrylov`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .._problem import Problem, Uniform
from ._registry import check_box, check_int, check_real, on_device, register, zeros

_PATTERNS = ("random", "bidiagonal")
_TARGETS = ("gaussian", "ones")
_ACTIVATIONS = {
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "relu": lambda z: jnp.maximum(z, 0.0),
    "cosine": jnp.cos,
}
# The same activations in numpy float64, for the teacher's outputs: the data of a problem
# must not depend on the process (JAX's x64 flag, the backend's matmul precision).
_NP_ACTIVATIONS = {
    "sigmoid": lambda z: 0.5 * (1.0 + np.tanh(0.5 * z)),
    "tanh": np.tanh,
    "relu": lambda z: np.maximum(z, 0.0),
    "cosine": np.cos,
}
_LOSSES = ("squared", "logistic")


def _choice(value, allowed, field: str, problem: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{problem}: `{field}` must be one of {list(allowed)}, got {value!r}.")
    return value


@register("matrix-completion-nxn")
def matrix_completion_nxn(
    n: int = 30,
    r: int = 2,
    rate: float = 0.35,
    seed: int = 0,
    rank_m: int | None = None,
    pattern: str = "random",
    target: str = "gaussian",
    low: float = -1.0,
    high: float = 1.0,
    layout: str = "auto",
) -> Problem:
    r"""Rank-$r$ completion of an $n\times n$ matrix from a subset $\Omega$ of its entries,
    $f(X, Y) = \frac12\|P_\Omega(XY^T - M)\|_F^2$, $X, Y \in \mathbb R^{n\times r}$
    ($d = 2nr$).

    Data from `seed`: with `target="gaussian"`, $M = UV^T/\sqrt{\text{rank\_m}}$ with
    $U, V \in \mathbb R^{n\times \text{rank\_m}}$ standard Gaussian (entries of unit
    variance); with `target="ones"`, $M = \mathbf 1\mathbf 1^T$. With
    `pattern="random"` each entry is observed independently with probability `rate`;
    with `pattern="bidiagonal"`, $\Omega = \{(i, j) : j \le i \le j + 1\}$ (the diagonal
    and the one below it; `rate` is then unused).

    **Example 1.1 is the smallest instance:** `n=2, r=1, pattern="bidiagonal",
    target="ones"` observes $(1,1), (2,1), (2,2)$ of the all-ones matrix, so
    $f = \frac12[(x_1y_1 - 1)^2 + (x_2y_1 - 1)^2 + (x_2y_2 - 1)^2]$, half the loss of
    the problem `matrix-completion`, in the same flat order $(x_1, x_2, y_1, y_2)$ and
    with the same flow up to the time change $t \mapsto t/2$. Like Example 1.1, random
    instances have spurious local minima at infinity when $\Omega$ leaves rows or
    columns weakly coupled: from uniform starts in $[-1, 1]^d$ (the default sampler),
    with $n = 30$, $r = 2$, a rate of 0.35, most of the flows that do not converge
    escape to infinity with $f$ decreasing to a positive value.

    $\inf f = 0$ is attained when `rank_m` $\le r$ (at $X = U/\text{rank\_m}^{1/4}$,
    $Y = V/\text{rank\_m}^{1/4}$, padded with zero columns). Along the flow
    $X^TX - Y^TY$ is conserved.

    **Parameters:** `n`, `r`, `rate` $\in (0, 1]$, `seed`, `rank_m` (default `r`),
    `pattern`, `target`, the box `low`, `high` of the uniform sampler, and `layout`:
    how $f$ is computed, `"dense"` (the masked product $XY^T$, $O(n^2r)$) or `"sparse"`
    (the observed entries only, gathered: $O(|\Omega|r)$, but a gathered entry costs
    about 10–30 dense ones on a CPU); `"auto"` (default) is sparse when fewer than
    $n^2/30$ entries are observed. Measured (float32, gradient / Hessian-vector product
    of 64 lanes, one core): $n = 100$, rate 0.1, dense 1.5 / 3.3 ms, sparse 4.0 / 9.5 ms;
    $n = 1000$, rate 0.01 (8 lanes), dense 24 / 88 ms, sparse 5.0 / 9.7 ms.
    Variables `{"X": (n, r), "Y": (n, r)}`; `problem.data` holds `M` and the 0/1 mask.
    """
    name = "matrix-completion-nxn"
    n = check_int(n, "n", name)
    r = check_int(r, "r", name)
    rate = check_real(rate, "rate", name, positive=True)
    if rate > 1:
        raise ValueError(f"{name}: `rate` is a probability in (0, 1], got {rate}.")
    rank_m = r if rank_m is None else check_int(rank_m, "rank_m", name)
    if rank_m > n:
        raise ValueError(f"{name}: `rank_m` must be <= n = {n}, got {rank_m}.")
    pattern = _choice(pattern, _PATTERNS, "pattern", name)
    target = _choice(target, _TARGETS, "target", name)
    low, high = check_box(low, high, name)
    layout = _choice(layout, ("auto", "dense", "sparse"), "layout", name)
    rng = np.random.default_rng(check_int(seed, "seed", name, minimum=0))
    if target == "ones":
        m = np.ones((n, n))
        rank_m = 1
    else:
        m = rng.normal(size=(n, rank_m)) @ rng.normal(size=(rank_m, n)) / np.sqrt(rank_m)
    if pattern == "bidiagonal":
        i, j = np.indices((n, n))
        mask = ((i == j) | (i == j + 1)).astype(np.float64)
    else:
        mask = (rng.uniform(size=(n, n)) < rate).astype(np.float64)
    mj, maskj = on_device(m), on_device(mask)
    if layout == "auto":
        layout = "sparse" if 30 * mask.sum() < n * n else "dense"
    rows, cols = (on_device(a, np.int32) for a in np.nonzero(mask))
    observed = on_device(m[np.nonzero(mask)])

    def f(p):
        dtype = p["X"].dtype  # the data follow the run's dtype (float32 or float64)
        if layout == "sparse":
            res = jnp.sum(p["X"][rows] * p["Y"][cols], axis=1) - observed.astype(dtype)
        else:  # the masked product: fused and vectorised
            res = maskj.astype(dtype) * (p["X"] @ p["Y"].T - mj.astype(dtype))
        return 0.5 * jnp.sum(res * res)

    return Problem(
        f, example={"X": zeros((n, r)), "Y": zeros((n, r))},
        sampler=Uniform(low, high), name=name,
        global_infimum=0.0 if rank_m <= r else None,
        facts={
            "equation": "Example 1.1, generalised to n x n",
            "bounded_trajectories": None,
            "n": n, "r": r, "rank_m": rank_m, "observed": int(mask.sum()), "layout": layout,
            "conserved": "X^T X - Y^T Y",
            "example_1_1": n == 2 and r == 1 and pattern == "bidiagonal" and target == "ones",
        },
        description=(
            f"rank-{r} completion of a {n}x{n} matrix from {int(mask.sum())} entries "
            f"(d = {2 * n * r})"
        ),
        data={"M": m, "mask": mask},
    )


def _parse_widths(widths, name: str) -> tuple[int, ...]:
    if isinstance(widths, str):
        parts = [w for w in widths.replace("-", ",").split(",") if w.strip()]
        try:
            widths = [int(w) for w in parts]
        except ValueError as e:
            raise ValueError(
                f"{name}: `widths` must be integers such as '4,32,1' or [4, 32, 1], "
                f"got {widths!r}."
            ) from e
    if not isinstance(widths, Sequence) or len(widths) < 2:
        raise ValueError(
            f"{name}: `widths` lists the layer sizes from input to output (at least two, "
            f"e.g. [4, 32, 1]), got {widths!r}."
        )
    return tuple(check_int(w, "widths", name) for w in widths)


def mlp_apply(params, x, activation, activations=_ACTIVATIONS):
    """The network: `activation` after every layer but the last (linear output).
    `activations=_NP_ACTIVATIONS` evaluates numpy parameters in numpy."""
    act = activations[activation]
    h = x.astype(params[0]["w"].dtype)
    for k, layer in enumerate(params):
        h = h @ layer["w"] + layer["b"]
        if k < len(params) - 1:
            h = act(h)
    return h


def _teacher_outputs(teacher, x, activation) -> np.ndarray:
    """`mlp_apply` of the teacher in numpy float64: the targets are the same in every
    process (with JAX's float32 default they were rounded to float32, and on a GPU by
    its reduced-precision matmuls, so one problem had other data on another machine)."""
    teacher = [{k: np.asarray(v, np.float64) for k, v in layer.items()} for layer in teacher]
    return mlp_apply(teacher, np.asarray(x, np.float64), activation, _NP_ACTIVATIONS)


@register("mlp")
def mlp(
    widths: str | Sequence[int] = "8,32,1",
    activation: str = "tanh",
    loss: str = "squared",
    n_samples: int = 1000,
    seed: int = 0,
    low: float = -1.0,
    high: float = 1.0,
) -> Problem:
    r"""A fully connected network on teacher–student data, full-batch loss.

    Network $\hat y(x) = W_L^T\sigma(\cdots\sigma(W_1^Tx + b_1)\cdots) + b_L$ with layer
    sizes `widths` $= (n_0, n_1, \dots, n_L)$ and activation $\sigma \in$ {sigmoid,
    tanh, relu, cosine} after every layer but the last. Data from `seed`: inputs
    $x_i \sim \mathcal N(0, I_{n_0})$ ($i \le$ `n_samples`), a teacher of the same
    architecture with weights $\mathcal N(0, 1/\text{fan-in})$ and zero biases, and
    targets $y_i = \hat y_{\text{teacher}}(x_i)$ (`loss="squared"`,
    $f = \frac1{2N}\sum_i\|\hat y(x_i) - y_i\|^2$: the teacher is a global minimum,
    $f = 0$) or labels $s_i = \operatorname{sign}\hat y_{\text{teacher}}(x_i)$
    (`loss="logistic"`, one output, $f = \frac1N\sum_i\log(1 + e^{-s_i\hat y(x_i)})$:
    $\inf f = 0$ is not attained, a separating network drives $f \to 0$ only at
    infinity). The data are generated by numpy in float64 (the teacher's outputs too), so
    that they are the same in every process, whatever its dtype defaults or backend.

    With `activation="relu"` the loss is nonsmooth and the problem is marked so
    (minimal-norm subgradient flow).

    **Parameters:** `widths` (a list or a string such as `"8,32,1"`), `activation`,
    `loss`, `n_samples`, `seed`, and the box `low`, `high` of the uniform sampler.
    Variables: a list of `{"w": (n_{k-1}, n_k), "b": (n_k,)}`, one per layer
    ($d = \sum_k (n_{k-1} + 1) n_k$). `problem.data` holds `x`, `y` and `teacher` (the
    teacher's flat parameters, in the problem's flat order).
    """
    name = "mlp"
    widths = _parse_widths(widths, name)
    activation = _choice(activation, tuple(_ACTIVATIONS), "activation", name)
    loss = _choice(loss, _LOSSES, "loss", name)
    if loss == "logistic" and widths[-1] != 1:
        raise ValueError(f"{name}: the logistic loss needs one output (widths[-1] = 1), "
                         f"got widths {list(widths)}.")
    n_samples = check_int(n_samples, "n_samples", name)
    low, high = check_box(low, high, name)
    rng = np.random.default_rng(check_int(seed, "seed", name, minimum=0))
    teacher = [
        {"b": np.zeros(fan_out),
         "w": rng.normal(size=(fan_in, fan_out)) / np.sqrt(fan_in)}
        for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True)
    ]
    x = rng.normal(size=(n_samples, widths[0]))
    out = _teacher_outputs(teacher, x, activation)
    xj = on_device(x)
    if loss == "squared":
        y = out
        yj = on_device(y)

        def f(params):
            res = mlp_apply(params, xj, activation) - yj.astype(params[0]["w"].dtype)
            return 0.5 * jnp.sum(res * res) / n_samples
    else:
        y = np.where(out[:, 0] >= 0, 1.0, -1.0)
        yj = on_device(y)

        def f(params):
            margin = yj.astype(params[0]["w"].dtype) * mlp_apply(params, xj, activation)[:, 0]
            return jnp.mean(jnp.logaddexp(0.0, -margin))

    example = [
        {"b": zeros((fan_out,)), "w": zeros((fan_in, fan_out))}
        for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True)
    ]
    teacher_flat = np.concatenate(
        [np.ravel(leaf) for leaf in jax.tree_util.tree_leaves(teacher)]
    )
    dim = teacher_flat.size
    return Problem(
        f, example=example, sampler=Uniform(low, high), name=name,
        global_infimum=0.0, nonsmooth=activation == "relu",
        facts={
            "equation": "teacher–student data",
            "bounded_trajectories": None,
            "widths": list(widths), "activation": activation, "loss": loss,
            "n_samples": n_samples,
            "teacher_is_global_minimum": loss == "squared",
        },
        description=(
            f"{activation} MLP {'-'.join(map(str, widths))} on {n_samples} points, "
            f"{loss} loss (d = {dim})"
        ),
        data={"x": x, "y": y, "teacher": teacher_flat},
    )
