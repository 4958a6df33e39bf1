r"""The open question of Section 4.2, mapped: escapes of one-hidden-layer sigmoid networks
across hidden units $k$ and data points $m$.

Josz & Li (2023) end Section 4.2: with more than one data point, gradient trajectories of
a one-hidden-layer sigmoid network can be unbounded (Example 4.3: $k = 1$, $m = 2$, every
start with $f < 1$ escapes), "however, it is still an open question whether the gradient
trajectories will be bounded in the overparameterized case" ($k \ge m$).

This script runs three sweeps of `one-hidden-sigmoid` (`jaxflow.sweep`, resumable stores
under `--out`):

- `scalar`: inputs $x_i \in \mathbb R$, $k \in \{1, 2, 4, 8\}$, $m \in \{1, 2, 4, 8\}$;
- `vector`: inputs $x_i \in \mathbb R^2$, $k, m \in \{1, 2, 4\}$;
- `sanity`: Example 4.3's data ($m = 2$), $k \in \{1, 2, 4\}$; at $k = 1$ every start with
  $f(x_0) < 1$ must escape;
- `seeds`: the scalar point $k = m = 4$ with other data seeds (1 to 4), to see whether its
  escapes depend on the data set.

Data $x_i \sim \mathcal N(0, I_d)$, $y_i \sim \mathcal N(0, 1)$ from seed 0; starts uniform
in $[-3, 3]^{k(d+1)}$; float32 scans to horizon `--t1`. Every escaping or undecided
trajectory at an overparameterised point ($k \ge m$) is a candidate: it is re-run from its
own start in float64 to the longer horizon `--recheck-t1`, and saved (parameters, start,
both readings) in `benchmarks/results/open_question_cases-<machine>.json`.

Writes `benchmarks/results/open_question-<machine>.json` (the sweeps' summaries, the
sanity check, the candidates) and a Markdown table next to it. Run time on two shared CPU
cores at the defaults: about half an hour.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # float64 for the re-checks; scans stay float32

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS,
    machine_info,
    machine_tag,
    start_points,
    status_groups,
)

import jaxflow as jf  # noqa: E402
from jaxflow._stats import wilson_interval  # noqa: E402

PROBLEM = "one-hidden-sigmoid"
ESCAPE, UNDECIDED = status_groups()


def sweeps(args):
    return {
        "scalar": dict(grid={"hidden": [1, 2, 4, 8], "points": [1, 2, 4, 8]},
                       params={"input_dim": 1}, n=args.n_scalar),
        "vector": dict(grid={"hidden": [1, 2, 4], "points": [1, 2, 4]},
                       params={"input_dim": 2}, n=args.n_vector),
        "sanity": dict(grid={"hidden": [1, 2, 4]},
                       params={"points": 2, "data": "example-4-3"}, n=args.n_sanity),
        # Does the scalar k = m = 4 finding depend on the data set? Other data seeds.
        "seeds": dict(grid={"seed": [1, 2, 3, 4]},
                      params={"hidden": 4, "points": 4, "input_dim": 1}, n=args.n_seeds),
    }


def escape_profile(result, problem):
    """Escaping rows' final f and limit value, and the best value of the point."""
    st = result.column("status")
    f = result.column("f").astype(np.float64)
    lim = result.column("limit_value").astype(np.float64)
    alpha = result.column("growth_exponent").astype(np.float64)
    esc = np.isin(st, ESCAPE)
    conv = st == int(jf.Status.CONVERGED)
    out = {
        "best_converged_f": float(f[conv].min()) if conv.any() else None,
        "median_converged_f": float(np.median(f[conv])) if conv.any() else None,
    }
    if esc.any():
        out.update(
            escaping_final_f=[float(np.min(f[esc])), float(np.median(f[esc])),
                              float(np.max(f[esc]))],
            escaping_limit_value=[float(np.nanmin(lim[esc])), float(np.nanmedian(lim[esc])),
                                  float(np.nanmax(lim[esc]))],
            escaping_growth_exponent_median=float(np.nanmedian(alpha[esc])),
        )
    return out


def recheck(problem, x0, t1):
    """Float64 flow from each start to `t1`; the classification's reading per start."""
    res = jf.flow(problem, jax.numpy.asarray(x0, jax.numpy.float64), t1=t1)
    cls = jf.classify(res)
    table = jf.trajectory_table(res, cls)
    names = jf.Status.names()
    ts = np.asarray(res.ts)
    cp_norm = np.asarray(table["cp_norm"], np.float64)
    rows = []
    for i in range(x0.shape[0]):
        # ||x|| at t1/100 and t1: the growth over the last two decades.
        k1 = int(np.searchsorted(ts, t1 / 100))
        rows.append({
            "status_float64": names[int(table["status"][i])],
            "f_final": float(table["f"][i]),
            "stationarity": float(table["stationarity"][i]),
            "norm_final": float(table["norm"][i]),
            "norm_at_t1_over_100": float(cp_norm[i, min(k1, cp_norm.shape[1] - 1)]),
            "growth_exponent": float(table["growth_exponent"][i]),
            "limit_value": float(table["limit_value"][i]),
            "t": float(table["t"][i]),
        })
    return rows


def markdown(record: dict) -> str:
    """The results as Markdown tables (escaping and undecided fractions per point)."""
    out = [f"# Open question of Section 4.2: one-hidden-sigmoid, T = {record['t1']:g} "
           f"(float32), re-checks to T = {record['recheck_t1']:g} (float64)", "",
           f"{record['note']}.", ""]
    for name, s in record["sweeps"].items():
        out += [f"## {name}: fixed {s['fixed']}, N = {s['n']} per point, "
                f"{s['wall_s'] / 60:.1f} min", "",
                "| k | m | k >= m | escaping [95 %] | undecided [95 %] | final f of escaping "
                "(median) |", "|---|---|---|---|---|---|"]
        for r in s["rows"]:
            p = r["params"]
            ff = r.get("escaping_final_f")
            out.append(
                f"| {p['hidden']} | {p['points']} | {'yes' if r['overparameterised'] else 'no'} "
                f"| {100 * r['escaping_fraction']:.2f} % [{100 * r['escaping_low']:.2f}, "
                f"{100 * r['escaping_high']:.2f}] | {100 * r['undecided_fraction']:.2f} % "
                f"[{100 * r['undecided_low']:.2f}, {100 * r['undecided_high']:.2f}] | "
                f"{'—' if not ff else f'{ff[1]:.4f}'} |")
        out.append("")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="jaxflow-out/open-question")
    ap.add_argument("--n-scalar", type=int, default=1000)
    ap.add_argument("--n-vector", type=int, default=500)
    ap.add_argument("--n-sanity", type=int, default=2000)
    ap.add_argument("--n-seeds", type=int, default=300)
    ap.add_argument("--t1", type=float, default=1e4)
    ap.add_argument("--recheck-t1", type=float, default=1e6)
    ap.add_argument("--max-candidates", type=int, default=6, help="re-checked per point")
    ap.add_argument("--chunk-size", type=int, default=250)
    ap.add_argument("--only", default=None, help="comma-separated subset of the sweeps")
    ap.add_argument("--markdown-only", action="store_true",
                    help="only rewrite the Markdown table from the stored JSON")
    args = ap.parse_args(argv)
    if args.markdown_only:
        tag = machine_tag(machine_info())
        record = json.loads((RESULTS / f"open_question-{tag}.json").read_text())
        (RESULTS / f"open_question-{tag}.md").write_text(markdown(record))
        return

    info = machine_info()
    tag = machine_tag(info)
    out = Path(args.out)
    record = {"machine": info, "note": "machine shared with other jobs (2 cores, 5 users); "
              "timings are indicative only",
              "problem": PROBLEM, "t1": args.t1, "recheck_t1": args.recheck_t1,
              "sampler": "uniform [-3, 3] per coordinate", "dtype_scan": "float32",
              "dtype_recheck": "float64", "data_seed": 0, "start_seed": 0, "sweeps": {}}
    cases = []
    wanted = set(args.only.split(",")) if args.only else None
    for name, cfg in sweeps(args).items():
        if wanted and name not in wanted:
            continue
        t0 = time.perf_counter()
        res = jf.sweep(PROBLEM, cfg["grid"], cfg["n"], out=out / name, params=cfg["params"],
                       t1=args.t1, seed=0, chunk_size=min(args.chunk_size, cfg["n"]),
                       save_trajectories=64)
        wall = time.perf_counter() - t0
        print(f"{name}: {wall:.0f} s", flush=True)
        res.summary.write(out / name / "report")
        rows = []
        for p, r, row in zip(res.points, res.results, res.summary.rows, strict=True):
            full = {**cfg["params"], **p}
            problem = jf.problems.get(PROBLEM, **full)
            keep = {k: row[k] for k in (
                "n", "escaping", "escaping_fraction", "escaping_low", "escaping_high",
                "undecided", "undecided_fraction", "undecided_low", "undecided_high",
                "settled", "values_at_infinity", "growth_exponents", "critical_values",
                "best_value", "global_infimum", "bounded_verdict")}
            keep.update(params=full, overparameterised=full["hidden"] >= full["points"],
                        counts=r.counts(), **escape_profile(r, problem))
            if name == "sanity" and full["hidden"] == 1:
                x0 = start_points(r, problem.dim)
                f0 = np.asarray(jax.vmap(problem.f_flat)(jax.numpy.asarray(x0, np.float64)))
                below = f0 < 1.0
                st = r.column("status")
                k_esc = int(np.isin(st[below], ESCAPE).sum())
                lo, hi = wilson_interval(k_esc, int(below.sum()))
                keep["example_4_3"] = {
                    "starts_with_f_below_1": int(below.sum()),
                    "of_which_escaping": k_esc, "interval": [lo, hi],
                    "starts_with_f_at_least_1": int((~below).sum()),
                    "of_which_escaping_above": int(np.isin(st[~below], ESCAPE).sum()),
                }
            if full["hidden"] >= full["points"]:
                st = r.column("status")
                sel = np.flatnonzero(np.isin(st, ESCAPE + UNDECIDED))
                keep["candidates"] = int(sel.size)
                if sel.size:
                    sel = sel[: args.max_candidates]
                    x0 = start_points(r, problem.dim)[sel]
                    t1 = time.perf_counter()
                    checks = recheck(problem, x0, args.recheck_t1)
                    print(f"  recheck {full}: {len(sel)} starts, "
                          f"{time.perf_counter() - t1:.0f} s", flush=True)
                    names = jf.Status.names()
                    for i, c in zip(sel, checks, strict=True):
                        cases.append({
                            "sweep": name, "params": full, "row": int(i),
                            "start": [float(v) for v in start_points(r, problem.dim)[i]],
                            "status_float32": names[int(st[i])],
                            "f_float32": float(r.column("f")[i]),
                            "norm_float32": float(r.column("norm")[i]),
                            **c,
                        })
            rows.append(keep)
        record["sweeps"][name] = {"grid": cfg["grid"], "fixed": cfg["params"], "n": cfg["n"],
                                  "wall_s": wall, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"open_question-{tag}.json"
    cpath = RESULTS / f"open_question_cases-{tag}.json"
    if wanted and path.exists():  # a subset: keep the other sweeps' stored results
        old = json.loads(path.read_text())
        record["sweeps"] = {**old["sweeps"], **record["sweeps"]}
        if cpath.exists():
            cases = [c for c in json.loads(cpath.read_text())["cases"]
                     if c["sweep"] not in wanted] + cases
    path.write_text(json.dumps(record, indent=1, default=float) + "\n")
    path.with_suffix(".md").write_text(markdown(record))
    cpath.write_text(json.dumps({
        "about": "candidate counterexamples: escaping/undecided trajectories at k >= m, with "
                 "their float64 re-check from the same start (reproduce with jaxflow.flow("
                 "jaxflow.problems.get('one-hidden-sigmoid', **params), [start], t1=...))",
        "recheck_t1": args.recheck_t1, "cases": cases}, indent=1) + "\n")
    print(f"wrote {path} and {cpath}")


if __name__ == "__main__":
    main()
