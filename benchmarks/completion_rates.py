r"""Matrix completion across observation rates and ranks: where do spurious minima at
infinity disappear?

Rank-$r$ completion of an $n\times n$ matrix, $f(X, Y) = \frac12\|P_\Omega(XY^T - M)\|_F^2$
(problem `matrix-completion-nxn`), with $M = UV^T/\sqrt r$ of rank $r$ (so $\inf f = 0$
is attained) and each entry observed with probability `rate`. Example 1.1 of Josz & Li
(2023) is the smallest instance with a spurious minimum at infinity: three observed
entries of the all-ones $2\times 2$ matrix, value at infinity $\frac12$ here (half the
paper's loss). With all entries observed, $f = \frac12\|XY^T - M\|_F^2$ has bounded
gradient trajectories (the balanced invariant $X^TX - Y^TY$ is conserved and bounds
$\|X\|^2 + \|Y\|^2$ by a function of $f$), so no start may escape at rate 1.

This script sweeps $n = 4$ ($d = 2nr \le 16$, the dense Rodas4 of the automatic solver
choice) over `rate` $\in \{0.3, 0.4, \dots, 1.0\}$, $r \in \{1, 2\}$ and the data seed
(six instances per rate; for one seed the observed sets are nested across rates, since
the mask is `uniform < rate` drawn after $M$ from the same seed), `--n` starts per point
(uniform in $[-1, 1]^d$), float32 to `--t1` with undecided trajectories continued to
`--extend`, in one resumable store under `--out`. Per point it keeps the escaping and
undecided fractions with 95 % Wilson intervals, the values at infinity of the escaping
trajectories (spurious when clearly above $\inf f = 0$), and structural facts of the
instance (observed entries, rows and columns with fewer than $r$ observed entries,
connectedness of the observed bipartite graph). It then reads off, per rank, per seed and
pooled, the smallest rate of the grid above which no start escapes, with the upper 95 %
bound on the escaping fraction there. Up to `--max-candidates` escaping starts per point, per
rank, at rate 1 (every seed with escapes there) and at the highest rate that shows spurious
escapes (every seed there; the first seed at the next lower rate), are re-run from their
own start in float64 to `--recheck-t1` (100 x the scan's horizon) and saved as
reproducible cases, with the drift of the invariant $X^TX - Y^TY$.

Writes `benchmarks/results/completion_rates-<machine>.json`, a Markdown table next to it
and `completion_rates_cases-<machine>.json`. `--smoke` runs a tiny version (seconds) and
writes nothing under `benchmarks/results/` unless `--write` is given.
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

PROBLEM = "matrix-completion-nxn"
ESCAPE, UNDECIDED = status_groups()
# An escaping trajectory still above this f at the horizon is counted as spurious (its
# value at infinity is above inf f = 0): float32 flows that converge end at f ~ 1e-8 here,
# while the escapes to a positive value settle at 1e-4 and above (their extrapolated
# limits cluster there, and the float64 re-checks flatten out there). The extrapolated
# limit alone is too noisy for values ~1e-4 (it can come out negative).
SPURIOUS_TOL = 1e-5


def structure(problem, r: int) -> dict:
    """Facts of the observed pattern: entries, rows/columns with fewer than `r` observed
    entries, and the connected components of the bipartite graph rows -- columns."""
    mask = np.asarray(problem.data["mask"]) > 0
    n = mask.shape[0]
    parent = list(range(2 * n))  # union-find over rows 0..n-1 and columns n..2n-1

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i, j in zip(*np.nonzero(mask), strict=True):
        parent[find(int(i))] = find(n + int(j))
    components = len({find(a) for a in range(2 * n)})
    return {
        "observed": int(mask.sum()),
        "degrees_of_freedom": r * (2 * n - r),
        "rows_below_r": int((mask.sum(1) < r).sum()),
        "cols_below_r": int((mask.sum(0) < r).sum()),
        "components": components,
        "connected": components == 1,
        "mask": mask.astype(int).tolist(),
    }


def escape_profile(result) -> dict:
    st = result.column("status")
    f = result.column("f").astype(np.float64)
    lim = result.column("limit_value").astype(np.float64)
    esc = np.isin(st, ESCAPE)
    conv = st == int(jf.Status.CONVERGED)
    out = {"best_converged_f": float(f[conv].min()) if conv.any() else None,
           "spurious_escapes": 0, "escapes_towards_zero": 0}
    if esc.any():
        # The value at infinity of a trajectory: its extrapolated limit of f, clipped to
        # [0, last f reached] (f decreases along the flow, and f >= 0).
        v = np.clip(np.where(np.isfinite(lim[esc]), lim[esc], f[esc]), 0.0, f[esc])
        spurious = f[esc] > SPURIOUS_TOL
        out.update(
            spurious_escapes=int(spurious.sum()),
            escapes_towards_zero=int((~spurious).sum()),
            escaping_final_f=[float(np.min(f[esc])), float(np.median(f[esc])),
                              float(np.max(f[esc]))],
            escaping_value_at_infinity=[float(np.min(v)), float(np.median(v)),
                                        float(np.max(v))],
        )
    return out


def chunk_seconds(result) -> float:
    """Seconds the point's chunks took (compile + integrate + classify), from its journal:
    also known for points computed by an earlier, interrupted run."""
    path = Path(result.out) / "journal.jsonl"
    if not path.exists():
        return float("nan")
    return float(sum(json.loads(line).get("seconds", 0.0)
                     for line in path.read_text().splitlines() if line.strip()))


def invariant(problem, x):
    p = problem.unravel(jax.numpy.asarray(x, jax.numpy.float64))
    X, Y = np.asarray(p["X"]), np.asarray(p["Y"])
    return X.T @ X - Y.T @ Y


def recheck(problem, x0, t1):
    """Float64 flow from each start to `t1`: status, f, growth, the invariant's drift."""
    res = jf.flow(problem, jax.numpy.asarray(x0, jax.numpy.float64), t1=t1)
    table = jf.trajectory_table(res, jf.classify(res))
    names = jf.Status.names()
    ts = np.asarray(res.ts)
    cp_norm = np.asarray(table["cp_norm"], np.float64)
    cp_f = np.asarray(res.cp_f, np.float64)
    k1 = min(int(np.searchsorted(ts, t1 / 100)), cp_norm.shape[1] - 1)
    rows = []
    for i in range(x0.shape[0]):
        drift = np.abs(invariant(problem, res.x[i]) - invariant(problem, x0[i])).max()
        rows.append({
            "status_float64": names[int(table["status"][i])],
            "f_final": float(table["f"][i]),
            "f_at_t1_over_100": float(cp_f[i, k1]),
            "stationarity": float(table["stationarity"][i]),
            "norm_final": float(table["norm"][i]),
            "norm_at_t1_over_100": float(cp_norm[i, k1]),
            "growth_exponent": float(table["growth_exponent"][i]),
            "limit_value": float(table["limit_value"][i]),
            "invariant_drift": float(drift),
            "t": float(table["t"][i]),
        })
    return rows


def threshold(rows, rates, key="escaping"):
    """The smallest grid rate from which on no row has an escape (`None` if the largest
    rate has some), with the starts behind it and the upper 95 % bound of the fraction."""
    by_rate = {q: sum(r[key] for r in rows if r["rate"] == q) for q in rates}
    starts = {q: sum(r["n"] for r in rows if r["rate"] == q) for q in rates}
    best = None
    for q in sorted(rates, reverse=True):
        if by_rate[q]:
            break
        best = q
    if best is None:
        return {"rate": None}
    n0 = sum(starts[q] for q in rates if q >= best)
    return {"rate": best, "starts_without_escape": n0,
            "escaping_fraction_upper_95": wilson_interval(0, n0)[1],
            "highest_rate_with_escapes": max((q for q in rates if by_rate[q]), default=None)}


def reading(rows, rates, seeds, ranks) -> dict:
    out = {}
    for r in ranks:
        rr = [x for x in rows if x["r"] == r]
        per_seed = {}
        for s in seeds:
            rs = [x for x in rr if x["seed"] == s]
            per_seed[str(s)] = {"any": threshold(rs, rates),
                                "spurious": threshold(rs, rates, "spurious_escapes")}
        pooled = []
        for q in rates:
            rq = [x for x in rr if x["rate"] == q]
            k, n = sum(x["escaping"] for x in rq), sum(x["n"] for x in rq)
            ks = sum(x["spurious_escapes"] for x in rq)
            lo, hi = wilson_interval(k, n)
            slo, shi = wilson_interval(ks, n)
            pooled.append({"rate": q, "n": n, "escaping": k, "escaping_fraction": k / n,
                           "escaping_low": lo, "escaping_high": hi, "spurious_escapes": ks,
                           "spurious_fraction": ks / n, "spurious_low": slo,
                           "spurious_high": shi,
                           "seeds_with_escapes": sorted(x["seed"] for x in rq if x["escaping"]),
                           "undecided": sum(x["undecided"] for x in rq)})
        out[str(r)] = {"per_seed": per_seed, "pooled": pooled,
                       "pooled_threshold": threshold(rr, rates),
                       "pooled_threshold_spurious": threshold(rr, rates, "spurious_escapes")}
    return out


def markdown(record: dict) -> str:
    pct = lambda a, lo, hi: f"{100 * a:.2f} % [{100 * lo:.2f}, {100 * hi:.2f}]"  # noqa: E731
    out = [f"# Matrix completion across observation rates: n = {record['n']}, "
           f"T = {record['t1']:g} (float32, undecided continued to {record['extend']:g}), "
           f"re-checks to T = {record['recheck_t1']:g} (float64)", "",
           f"{record['note']}. N = {record['n_starts']} starts per point; the points' "
           f"chunks took {record['chunk_seconds_total'] / 60:.1f} min in all (compile included), "
           f"the last run {record['wall_s'] / 60:.1f} min.", ""]
    san = record.get("example_1_1")
    if san:
        out += [f"Example 1.1 (n = 2, r = 1, bidiagonal, all ones): escaping "
                f"{pct(san['escaping_fraction'], san['escaping_low'], san['escaping_high'])}, "
                f"value at infinity (median) {san['value_at_infinity_median']:.4f} "
                "(expected 0.5).", ""]
    for r, rd in record["reading"].items():
        th, ths = rd["pooled_threshold"], rd["pooled_threshold_spurious"]
        out += [f"## rank r = {r}", ""]
        for label, t in (("escapes", th), ("spurious escapes", ths)):
            if t["rate"] is not None:
                out.append(f"No {label} at any seed from rate {t['rate']:g} on "
                           f"({t['starts_without_escape']} starts, fraction < "
                           f"{100 * t['escaping_fraction_upper_95']:.3f} % at 95 %); highest "
                           f"rate with {label}: {t['highest_rate_with_escapes']}.")
            else:
                out.append(f"{label.capitalize()} at the highest rate of the grid.")
        out += ["", "Pooled over seeds:", "",
                "| rate | N | escaping [95 %] | spurious [95 %] | seeds with escapes | "
                "undecided |", "|---|---|---|---|---|---|"]
        for p in rd["pooled"]:
            out.append(f"| {p['rate']:g} | {p['n']} | "
                       f"{pct(p['escaping_fraction'], p['escaping_low'], p['escaping_high'])} | "
                       f"{pct(p['spurious_fraction'], p['spurious_low'], p['spurious_high'])} | "
                       f"{p['seeds_with_escapes'] or '—'} | {p['undecided']} |")
        out += ["", "Per seed: smallest rate from which on no start escapes (any / spurious):",
                "", "| seed | any | spurious |", "|---|---|---|"]
        for s, v in rd["per_seed"].items():
            out.append(f"| {s} | {v['any']['rate']} | {v['spurious']['rate']} |")
        out += ["", "| rate | seed | observed | rows/cols < r | connected | escaping [95 %] | "
                "spurious | undecided | value at infinity (min, median, max) |",
                "|---|---|---|---|---|---|---|---|---|"]
        for x in record["points"]:
            if str(x["r"]) != r:
                continue
            v = x.get("escaping_value_at_infinity")
            out.append(
                f"| {x['rate']:g} | {x['seed']} | {x['observed']} | {x['rows_below_r']}/"
                f"{x['cols_below_r']} | {'yes' if x['connected'] else 'no'} | "
                f"{pct(x['escaping_fraction'], x['escaping_low'], x['escaping_high'])} | "
                f"{x['spurious_escapes']} | {x['undecided']} | "
                f"{'—' if not v else ', '.join(f'{a:.2e}' for a in v)} |")
        out.append("")
    if record.get("cases"):
        out += ["## Re-checks (float64, own start)", "",
                "| r | rate | seed | row | float32 | float64 | f(T/100) | f(T) | "
                "‖x‖(T/100) | ‖x‖(T) | invariant drift |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
        for c in record["cases"]:
            p = c["params"]
            out.append((f"| {p['r']} | {p['rate']:g} | {p['seed']} | {c['row']} | "
                        f"{c['status_float32']} | {c['status_float64']} | "
                        f"{c['f_at_t1_over_100']:.6f} | {c['f_final']:.6f} | "
                        f"{c['norm_at_t1_over_100']:.2f} | {c['norm_final']:.2f} | "
                        f"{c['invariant_drift']:.1e} |").replace("nan", "—"))
        out.append("")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="jaxflow-out/completion-rates")
    ap.add_argument("--n", type=int, default=2000, help="starts per grid point")
    ap.add_argument("--size", type=int, default=4, help="n of the n x n matrix")
    ap.add_argument("--rates", default="0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0")
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--seeds", type=int, default=6, help="data seeds 0 .. seeds-1")
    ap.add_argument("--t1", type=float, default=1e4)
    ap.add_argument("--extend", type=float, default=1e5, help="extend_undecided horizon")
    ap.add_argument("--recheck-t1", type=float, default=1e6)
    ap.add_argument("--max-candidates", type=int, default=3, help="re-checked per point")
    ap.add_argument("--note", default=None, help="appended to the results' note")
    ap.add_argument("--smoke", action="store_true", help="tiny run (seconds)")
    ap.add_argument("--write", action="store_true", help="with --smoke: write results anyway")
    ap.add_argument("--markdown-only", action="store_true",
                    help="only rewrite the Markdown table from the stored JSON")
    args = ap.parse_args(argv)
    info = machine_info()
    tag = machine_tag(info)
    path = RESULTS / f"completion_rates-{tag}.json"
    if args.markdown_only:
        path.with_suffix(".md").write_text(markdown(json.loads(path.read_text())))
        return
    if args.smoke:
        args.n, args.rates, args.ranks, args.seeds = 64, "0.5,1.0", "1", 2
        args.t1, args.extend, args.recheck_t1 = 1e3, 1e3, 1e4
        args.out = str(Path(args.out) / "smoke")
    rates = [float(q) for q in args.rates.split(",")]
    ranks = [int(r) for r in args.ranks.split(",")]
    seeds = list(range(args.seeds))
    out = Path(args.out)
    fixed = {"n": args.size}
    flow_opts = dict(t1=args.t1, extend_undecided=args.extend if args.extend > args.t1 else None)
    record = {
        "machine": info,
        "note": "single core (taskset -c 1), machine shared with other jobs; timings are "
                "indicative only",
        "problem": PROBLEM, "n": args.size, "ranks": ranks, "rates": rates, "seeds": seeds,
        "n_starts": args.n, "t1": args.t1, "extend": args.extend,
        "recheck_t1": args.recheck_t1, "sampler": "uniform [-1, 1] per coordinate",
        "dtype_scan": "float32", "dtype_recheck": "float64", "start_seed": 0,
        "spurious_tol": SPURIOUS_TOL, "smoke": args.smoke,
    }
    t_all = time.perf_counter()

    # Example 1.1: every escape has value at infinity 1/2 (half the paper's 1).
    t0 = time.perf_counter()
    ex = jf.scan(PROBLEM, args.n, out=out / "example-1-1", seed=0, chunk_size=args.n,
                 params=dict(n=2, r=1, pattern="bidiagonal", target="ones"), **flow_opts)
    st = ex.column("status")
    esc = np.isin(st, ESCAPE)
    lo, hi = wilson_interval(int(esc.sum()), len(st))
    lim = ex.column("limit_value").astype(np.float64)[esc]
    record["example_1_1"] = {
        "n": len(st), "escaping": int(esc.sum()), "escaping_fraction": float(esc.mean()),
        "escaping_low": lo, "escaping_high": hi,
        "value_at_infinity_median": float(np.nanmedian(lim)) if esc.any() else None,
        "counts": ex.counts(), "wall_s": time.perf_counter() - t0}
    print(f"Example 1.1: {ex.counts()}", flush=True)

    # The sweep; per-point wall times from the progress callback.
    starts = {}

    def progress(sp):
        if sp.scan is None:
            starts[sp.point] = time.perf_counter()
            print(f"  point {sp.point + 1}/{sp.points_total} {sp.params}", flush=True)

    t0 = time.perf_counter()
    res = jf.sweep(PROBLEM, {"r": ranks, "rate": rates, "seed": seeds}, args.n,
                   out=out / "sweep", params=fixed, seed=0, chunk_size=args.n,
                   save_trajectories=16, progress=progress, **flow_opts)
    record["sweep_wall_s"] = time.perf_counter() - t0
    order = sorted(starts)
    point_wall = {i: (starts[j] if k + 1 < len(order) else time.perf_counter()) - starts[i]
                  for k, (i, j) in enumerate(zip(order, order[1:] + [None], strict=True))}
    res.summary.write(out / "sweep" / "report")

    rows = []
    for i, (p, r, srow) in enumerate(zip(res.points, res.results, res.summary.rows,
                                         strict=True)):
        problem = jf.problems.get(PROBLEM, **fixed, **p)
        keep = {k: srow[k] for k in (
            "n", "escaping", "escaping_fraction", "escaping_low", "escaping_high",
            "undecided", "undecided_fraction", "undecided_low", "undecided_high",
            "values_at_infinity", "value_at_infinity_fractions", "growth_exponents",
            "spurious_at_infinity", "best_value", "bounded_verdict")}
        keep.update(p, counts=r.counts(), wall_s=point_wall.get(i),
                    chunk_seconds=chunk_seconds(r), **structure(problem, p["r"]),
                    **escape_profile(r))
        rows.append(keep)

    # Re-checks, per rank: every escape called at rate 1 (where trajectories are bounded),
    # the spurious escapes at the highest rate that has some (every seed there) and at the
    # next lower one (its first seed).
    cases = []
    names = jf.Status.names()
    for rk in ranks:
        sp_rates = sorted({x["rate"] for x in rows if x["r"] == rk and x["spurious_escapes"]})
        todo = [(x, False) for x in rows
                if x["r"] == rk and x["rate"] == 1.0 and x["escaping"]]
        for q in sp_rates[-2:]:
            chosen = [x for x in rows if x["r"] == rk and x["rate"] == q
                      and x["spurious_escapes"]]
            todo += [(x, True) for x in (chosen if q == sp_rates[-1] else chosen[:1])]
        for x, only_spurious in todo:
            p = {"r": rk, "rate": x["rate"], "seed": x["seed"]}
            r = res.point(**p)
            problem = jf.problems.get(PROBLEM, **fixed, **p)
            st = r.column("status")
            pick = np.isin(st, ESCAPE)
            if only_spurious:
                pick &= r.column("f") > SPURIOUS_TOL
            sel = np.flatnonzero(pick)[: args.max_candidates]
            x0 = start_points(r, problem.dim)[sel]
            t1 = time.perf_counter()
            checks = recheck(problem, x0, args.recheck_t1)
            print(f"  recheck {p}: {len(sel)} starts, {time.perf_counter() - t1:.0f} s",
                  flush=True)
            for k, c in zip(sel, checks, strict=True):
                cases.append({"params": {**fixed, **p}, "row": int(k),
                              "start": [float(v) for v in x0[list(sel).index(k)]],
                              "status_float32": names[int(st[k])],
                              "f_float32": float(r.column("f")[k]),
                              "norm_float32": float(r.column("norm")[k]),
                              "limit_value_float32": float(r.column("limit_value")[k]),
                              **c})
    record.update(points=rows, reading=reading(rows, rates, seeds, ranks), cases=cases,
                  full_observation={str(rk): {
                      "escaping": sum(x["escaping"] for x in rows
                                      if x["r"] == rk and x["rate"] == 1.0),
                      "spurious_escapes": sum(x["spurious_escapes"] for x in rows
                                              if x["r"] == rk and x["rate"] == 1.0),
                      "n": sum(x["n"] for x in rows if x["r"] == rk and x["rate"] == 1.0)}
                      for rk in ranks if 1.0 in rates},
                  wall_s=time.perf_counter() - t_all,
                  chunk_seconds_total=float(np.nansum([x["chunk_seconds"] for x in rows])))
    if args.note:
        record["note"] += f"; {args.note}"
    for v in record["full_observation"].values():
        v["escaping_fraction_upper_95"] = wilson_interval(v["escaping"], v["n"])[1]
        v["spurious_fraction_upper_95"] = wilson_interval(v["spurious_escapes"], v["n"])[1]
    print(markdown(record))
    if args.smoke and not args.write:
        return
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(record, indent=1, default=float) + "\n")
    path.with_suffix(".md").write_text(markdown(record))
    cpath = RESULTS / f"completion_rates_cases-{tag}.json"
    cpath.write_text(json.dumps({
        "about": "escaping starts of matrix-completion-nxn at the highest observation rates "
                 "with escapes, re-run from their own start in float64 (reproduce with "
                 "jaxflow.flow(jaxflow.problems.get('matrix-completion-nxn', **params), "
                 "[start], t1=recheck_t1))",
        "recheck_t1": args.recheck_t1, "cases": cases}, indent=1) + "\n")
    print(f"wrote {path} and {cpath}")


if __name__ == "__main__":
    main()
