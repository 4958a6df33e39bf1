r"""Beyond the paper: bad local minima pushed to infinity by an extra neuron.

Liang, Sun, Lee & Srikant (NeurIPS 2018, "Adding one neuron can eliminate all bad
local minima") add one exponential neuron with a skip connection and a small $\ell_2$
penalty to a network and prove that every local minimum of the new loss is global.
Sohl-Dickstein & Kawaguchi (arXiv 1901.03909) isolate the mechanism: for any loss
$L \ge 0$ whose global minimum is 0,

$$\tilde L(\theta, a, b) = L(\theta)\,\bigl(1 + (a e^b - 1)^2\bigr) + \lambda a^2$$

has no bad local minima, because each bad local minimum $\theta^*$ of $L$ becomes a
minimum at infinity ($a \to 0$, $b \to \infty$, $a e^b \to 1$, $\tilde L \to L(\theta^*)$).
In the language of Josz & Li these are spurious local minima at infinity, and the
gradient flow finds them: $b(t) \approx \tfrac12\log(4\lambda t)$.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .._problem import Problem, Uniform
from ._registry import check_int, check_real, on_device, register, zeros


def _cosine_data(n_samples, teacher_v, teacher_w, x_max, seed, name):
    n_samples = check_int(n_samples, "n_samples", name)
    teacher_v = check_real(teacher_v, "teacher_v", name)
    teacher_w = check_real(teacher_w, "teacher_w", name)
    x_max = check_real(x_max, "x_max", name, positive=True)
    rng = np.random.default_rng(check_int(seed, "seed", name, minimum=0))
    # Random (not equispaced) inputs: on a grid, cos(w x_i) is periodic in w and the
    # teacher's frequency would reappear as infinitely many global minima (aliasing).
    x = np.sort(rng.uniform(0.0, x_max, n_samples))
    y = teacher_v * np.cos(teacher_w * x)
    return x, y


@register("cosine-network")
def cosine_network(
    width: int = 1,
    n_samples: int = 8,
    teacher_v: float = 1.0,
    teacher_w: float = 2.0,
    x_max: float = 3.0,
    seed: int = 0,
    extra_neuron: bool = False,
    lam: float = 0.1,
    v_max: float = 2.0,
    w_max: float = 8.0,
) -> Problem:
    r"""Beyond the paper: a one-hidden-layer network with cosine units, with or without
    the extra neuron of Liang et al. (2018) in the form of Sohl-Dickstein & Kawaguchi
    (2019, their equation (1)).

    Network $\hat y(x) = \sum_{j=1}^k v_j \cos(w_j x)$ (`width` $k$), data
    $x_i \sim U[0, x_{\max}]$, $y_i = v^* \cos(w^* x_i)$ ($i \le n$, a teacher of
    width one, so the global minimum 0 is attained), loss
    $L(v, w) = \frac1{2n}\sum_i (\hat y(x_i) - y_i)^2$. The loss is periodic-like in
    the frequencies $w_j$, so it has bad local minima (with the defaults, $k = 1$:
    values $\approx 0.0395, 0.163, 0.241$ at $|w| \approx 4.80, 8.79, 3.38$, all
    attracting a sizeable share of uniform starts; the global minima are
    $(v, w) = (1, \pm 2)$).

    With `extra_neuron=True` the loss is
    $\tilde L(v, w, a, b) = L(v, w)(1 + (a e^b - 1)^2) + \lambda a^2$: every critical
    point has $L = 0$ (so all local minima are global), while each bad local minimum
    $\theta^*$ of $L$ becomes a spurious local minimum at infinity, approached with
    $a \to 0$, $b \approx \frac12\log(4\lambda t) \to \infty$, $\tilde L \to L(\theta^*)$.
    Since $\nabla_\theta \tilde L = (1 + (ae^b - 1)^2)\nabla L$, the $\theta$-path is that
    of the flow of $L$, only reparametrised in time: the same starts fail, now at
    infinity.

    **Parameters:** `width` $k$; `n_samples` $n$; the teacher `teacher_v`, `teacher_w`;
    `x_max`; `seed` (data); `extra_neuron`; `lam` $\lambda > 0$; starts are uniform with
    $v_j \in [-v_{\max}, v_{\max}]$, $w_j \in [-w_{\max}, w_{\max}]$, $a, b \in [-1, 1]$.

    Variables: `{"v": (k,), "w": (k,)}`, plus scalars `"a"`, `"b"` with the extra
    neuron. `problem.data` holds `x` and `y`.
    """
    name = "cosine-network-extra-neuron" if extra_neuron else "cosine-network"
    width = check_int(width, "width", name)
    if not isinstance(extra_neuron, (bool, np.bool_)):
        raise TypeError(f"{name}: `extra_neuron` must be True or False, got {extra_neuron!r}.")
    lam = check_real(lam, "lam", name, positive=True)
    v_max = check_real(v_max, "v_max", name, positive=True)
    w_max = check_real(w_max, "w_max", name, positive=True)
    x, y = _cosine_data(n_samples, teacher_v, teacher_w, x_max, seed, name)
    xj, yj = on_device(x), on_device(y)

    def base_loss(p):
        dtype = p["w"].dtype  # the data in the starts' dtype (float32 runs stay float32)
        pred = jnp.cos(jnp.outer(xj.astype(dtype), p["w"])) @ p["v"]
        return 0.5 * jnp.mean((pred - yj.astype(dtype)) ** 2)

    example = {"v": zeros((width,)), "w": zeros((width,))}
    bounds = {"v": np.full(width, v_max), "w": np.full(width, w_max)}
    facts = {
        "equation": "Sohl-Dickstein & Kawaguchi (2019), (1)" if extra_neuron
        else "Liang et al. (2018) base network",
        "width": width,
        "n_samples": int(x.size),
        "teacher": [float(teacher_v), float(teacher_w)],
    }
    if extra_neuron:

        def f(p):
            u = p["a"] * jnp.exp(p["b"])
            return base_loss(p) * (1.0 + (u - 1.0) ** 2) + lam * p["a"] ** 2

        example = {**example, "a": zeros(()), "b": zeros(())}
        bounds = {**bounds, "a": np.ones(()), "b": np.ones(())}
        facts.update(
            lam=lam,
            spurious_local_minima=False,
            spurious_local_minima_at_infinity=True,
            bounded_trajectories=False,
            escape="a -> 0, b ~ log(4 lam t) / 2, a exp(b) -> 1, f -> bad values of L",
        )
    else:
        f = base_loss
        facts.update(
            spurious_local_minima=True,
            bounded_trajectories=None,
        )
    # Flat order of the bounds follows the pytree leaves (dict keys sorted).
    high = np.concatenate([np.ravel(bounds[k]) for k in sorted(bounds)])
    return Problem(
        f, example=example, sampler=Uniform(-high, high), name=name, global_infimum=0.0,
        facts=facts,
        description=(
            f"width-{width} cosine network on {x.size} points"
            + (f" + extra neuron (lambda = {lam:g})" if extra_neuron else "")
        ),
        data={"x": x, "y": y},
    )


@register("cosine-network-extra-neuron")
def cosine_network_extra_neuron(
    width: int = 1,
    n_samples: int = 8,
    teacher_v: float = 1.0,
    teacher_w: float = 2.0,
    x_max: float = 3.0,
    seed: int = 0,
    lam: float = 0.1,
    v_max: float = 2.0,
    w_max: float = 8.0,
) -> Problem:
    r"""Beyond the paper: `cosine-network` with the extra neuron,
    $\tilde L(\theta, a, b) = L(\theta)(1 + (a e^b - 1)^2) + \lambda a^2$
    (Sohl-Dickstein & Kawaguchi 2019, (1); Liang et al. 2018).

    No bad local minima; the bad local minima of the base network become spurious
    local minima at infinity ($b \to \infty$). Same parameters as `cosine-network`
    (see `info("cosine-network")`).
    """
    return cosine_network(
        width=width, n_samples=n_samples, teacher_v=teacher_v, teacher_w=teacher_w,
        x_max=x_max, seed=seed, extra_neuron=True, lam=lam, v_max=v_max, w_max=w_max,
    )
