"""Cost of `jaxflow.minnorm_subgradient` relative to `jax.grad` on ||XY^T - M||_1.

Section 4.4 of the paper, m = n = 10, r = 2 (d = 40 variables, 100 kinks), a batch of
10^4 points, both compiled (`jax.jit(jax.vmap(jax.grad(f)))` is the baseline). Two
kinds of points:

- `generic`: Gaussian X, Y (no residual is zero: the common case along a flow between
  kink arrivals). `minnorm_subgradient` runs its interpreted gradient with the rounding
  bands and finds no tied kink, so no point enters the QP.
- `on-kinks`: Y is solved from X so that 20 of the 100 residuals vanish (two per
  column of M): every point runs the box QP (over 32 kink slots, the tier for 20 tied
  kinks) and the certificates (LIKQ / sign test); side by side with
  `qp_method="fista"` (FISTA + Newton polish, the QP before the active-set method)
  and the default (`"auto"`: the active set up to 64 slots).

`max_rel_gap` is the largest duality gap relative to ||v||^2 (the certificate
||v - v*|| <= sqrt(2 gap)). Times exclude compilation (one warm-up call), call
`block_until_ready`, best of
`--repeat`. Writes `benchmarks/results/minnorm_cost-<machine>.json` and `.md`.

    python benchmarks/minnorm_cost.py            # float64 and float32, N = 10^4
    python benchmarks/minnorm_cost.py --smoke    # N = 200, not committed
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _common import markdown_table, timed, write_results  # noqa: E402

import jaxflow as jf  # noqa: E402


def points(kind: str, n_pts: int, mm, r: int, seed: int):
    """Flat points (n_pts, d). `on-kinks`: for every column j of M, Y_j solves two
    equations X_i . Y_j = M_ij exactly, so 2n of the mn residuals vanish."""
    rng = np.random.default_rng(seed)
    m, n = mm.shape
    x = rng.normal(size=(n_pts, m, r))
    y = rng.normal(size=(n_pts, n, r))
    if kind == "on-kinks":
        for k in range(n_pts):
            for j in range(n):
                while True:  # well-conditioned 2x2 systems (no huge entries in Y)
                    rows = rng.choice(m, size=r, replace=False)
                    if np.linalg.cond(x[k, rows]) < 20:
                        break
                y[k, j] = np.linalg.solve(x[k, rows], mm[rows, j])
    return np.concatenate([x.reshape(n_pts, -1), y.reshape(n_pts, -1)], axis=1)


def run(n_pts: int, dtype, repeat: int, m=10, n=10, r=2):
    rng = np.random.default_rng(1)
    mm = rng.normal(size=(m, r)) @ rng.normal(size=(r, n))
    mj = jnp.asarray(mm, dtype)

    def f(z):
        x = z[: m * r].reshape(m, r)
        y = z[m * r :].reshape(n, r)
        return jnp.sum(jnp.abs(x @ y.T - mj))

    problem = jf.Problem(f, dim=(m + n) * r, nonsmooth=True, name="l1-factorization")
    grad = jax.jit(jax.vmap(jax.grad(f)))

    def mn(xs, qp_method):
        res = jf.minnorm_subgradient(problem, xs, qp_method=qp_method)
        return res.v, res.gap, res.exactness

    rows = []
    for kind, qp_method in (("generic", "auto"), ("on-kinks", "fista"), ("on-kinks", "auto")):
        xs = jnp.asarray(points(kind, n_pts, mm, r, seed=0), dtype)
        t_grad, _ = timed(grad, xs, repeat=repeat)
        t_mn, out = timed(mn, xs, qp_method, repeat=repeat)
        v, gap, ex = (np.asarray(a) for a in out)
        rel_gap = gap / np.maximum(np.sum(v * v, axis=-1), np.finfo(v.dtype).tiny)
        codes = {jf.Exactness(int(c)).name: int(np.sum(ex == c)) for c in np.unique(ex)}
        rows.append(
            dict(
                points=kind,
                qp_method=qp_method,
                dtype=str(jnp.dtype(dtype)),
                N=n_pts,
                grad_s=t_grad,
                minnorm_s=t_mn,
                ratio=t_mn / t_grad,
                us_per_point=1e6 * t_mn / n_pts,
                max_rel_gap=float(np.max(rel_gap)),
                exactness=", ".join(f"{k}: {c}" for k, c in codes.items()),
            )
        )
        print(rows[-1], flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="N = 200, results not committed")
    ap.add_argument("--note", default="", help="how the machine was used during the run (recorded)")
    args = ap.parse_args(argv)
    n_pts = 200 if args.smoke else args.n
    rows = []
    for dtype in (jnp.float64, jnp.float32):
        rows += run(n_pts, dtype, args.repeat)
    cols = [
        "points",
        "qp_method",
        "dtype",
        "N",
        "grad_s",
        "minnorm_s",
        "ratio",
        "us_per_point",
        "max_rel_gap",
        "exactness",
    ]
    payload = dict(
        benchmark="minnorm_cost",
        problem="||X Y^T - M||_1, m = n = 10, r = 2 (Section 4.4)",
        goal="minnorm_subgradient / jax.grad <= 5 on CPU",
        note=args.note,
        load_average=list(__import__("os").getloadavg()),
        rows=rows,
    )
    write_results("minnorm_cost", payload, markdown_table(rows, cols), smoke=args.smoke)


if __name__ == "__main__":
    main()
