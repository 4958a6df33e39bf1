"""The detectors on the calibration catalogue: confusion matrices at several horizons.

Runs every landscape of `tests/catalogue.py` (power, logarithmic, wobbling and rotating
escapes, escapes with f -> -inf, slow convergence to degenerate minima, late saddle
departures, plateaus, the paper's examples) from `--per-landscape` starts in float32
with the default solver, to `--t1`, and classifies the same run as if it had stopped at
each of `--horizons` (`jaxflow.classify(..., horizon=T)`). With `--extend`, the
UNDECIDED trajectories at `--t1` are continued with `extend_undecided` up to that
horizon. Prints the confusion matrix (reference fate x status), the ESCAPING recall per
family and the UNDECIDED share, and the classification's cost relative to the
integration.

References: the fates follow from each landscape (closed-form flows, or no critical
point in reach, or coercivity; see `tests/catalogue.py`); the landscapes marked
`check_with_scipy` are integrated in float64 with SciPy (LSODA, rtol 1e-9) to ten times
the longest horizon, and the check (the norm still growing for escapes) is recorded.
Example 1.1's fate per start comes from that integration: escaping iff f > 1/2 there
(f -> 1 in the valley at infinity, f -> 0 at the minima).

    python benchmarks/detector_catalogue.py [--per-landscape 16] [--tag after]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import catalogue as C  # noqa: E402
from _common import RESULTS, markdown_table, write_results  # noqa: E402

REFERENCE = RESULTS / "detector_catalogue_reference.json"
STATUSES = ("ESCAPING", "ESCAPED", "BOUNDED", "CONVERGED", "UNDECIDED", "MAX_STEPS", "NONFINITE")


def scipy_references(t_end: float, seed: int) -> dict:
    """float64 SciPy flows of the `check_with_scipy` landscapes, all `MAX_STARTS` starts."""
    x0, idx = C.catalogue_starts(C.MAX_STARTS, seed)
    out = {"t_end": t_end, "seed": seed, "landscapes": {}}
    for i, ls in enumerate(C.LANDSCAPES):
        if not ls.check_with_scipy:
            continue
        t0 = time.perf_counter()
        norms, values = [], []
        for z in x0[idx == i][:, : C.DIM]:
            n, f = C.scipy_fate(ls, z, t_end)
            norms.append(n.tolist())
            values.append(f.tolist())
        norms, values = np.array(norms), np.array(values)
        if ls.fate == "example-1.1":
            fate = np.where(values[:, 1] > 0.5, C.ESCAPING, C.BOUNDED)
            check = True
        else:
            grows = norms[:, 1] > norms[:, 0] * 1.01
            fate = np.where(grows, C.ESCAPING, C.BOUNDED)
            check = bool(np.all(fate == ls.fate))
        out["landscapes"][ls.name] = dict(
            norm_t_end_over_10=norms[:, 0].tolist(), norm_t_end=norms[:, 1].tolist(),
            f_t_end=values[:, 1].tolist(), fate=fate.tolist(), agrees_with_catalogue=check,
            seconds=time.perf_counter() - t0,
        )
        print(f"  reference {ls.name}: {time.perf_counter() - t0:.1f} s, agrees={check}")
    return out


def confusion(fates, status_names):
    m = {f: {s: 0 for s in STATUSES} for f in (C.ESCAPING, C.BOUNDED)}
    for f, s in zip(fates, status_names, strict=True):
        m[f][s] = m[f].get(s, 0) + 1
    return m


def summarise(fates, status_names, families):
    esc = fates == C.ESCAPING
    caught = np.isin(status_names, ("ESCAPING", "ESCAPED"))
    wrong_esc = esc & np.isin(status_names, ("BOUNDED", "CONVERGED"))
    wrong_bnd = ~esc & caught
    recall = {}
    for fam in sorted(set(families[esc])):
        m = esc & (families == fam)
        recall[fam] = float(np.mean(caught[m]))
    return dict(
        confusion=confusion(fates, status_names),
        escaping_called_bounded_or_converged=int(wrong_esc.sum()),
        bounded_called_escaping=int(wrong_bnd.sum()),
        escaping_recall=float(np.mean(caught[esc])),
        escaping_recall_by_family=recall,
        undecided_share=float(np.mean(status_names == "UNDECIDED")),
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-landscape", type=int, default=16)
    ap.add_argument("--t1", type=float, default=1e5)
    ap.add_argument("--horizons", type=float, nargs="*", default=[1e3, 1e4, 1e5])
    ap.add_argument("--extend", type=float, default=1e6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--reference-only", action="store_true",
                    help="compute the float64 SciPy references (enables jax x64) and stop")
    args = ap.parse_args()

    if args.reference_only:
        ref = scipy_references(10 * max(args.extend, args.t1), args.seed)
        REFERENCE.write_text(json.dumps(ref, indent=1) + "\n")
        return
    ref = json.loads(REFERENCE.read_text())

    import jax
    import jax.numpy as jnp

    import jaxflow as jf

    x0, idx = C.catalogue_starts(args.per_landscape, args.seed)
    ex = [i for i, ls in enumerate(C.LANDSCAPES) if ls.fate == "example-1.1"][0]
    ex_fates = np.array(ref["landscapes"]["example-1.1"]["fate"])[: args.per_landscape]
    fates = C.reference_fates(x0, idx, ex_fates[np.arange((idx == ex).sum())] == C.ESCAPING)
    families = np.array([C.LANDSCAPES[i].family for i in idx])
    names = np.array([C.LANDSCAPES[i].name for i in idx])
    problem = C.catalogue_problem()
    xs = jnp.asarray(x0, jnp.float32)

    t0 = time.perf_counter()
    res = jf.flow(problem, xs, t1=args.t1)
    jax.block_until_ready(res.x)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = jf.flow(problem, xs, t1=args.t1)
    jax.block_until_ready(res.x)
    t_flow = time.perf_counter() - t0
    jax.block_until_ready(jf.classify(res).status)
    t0 = time.perf_counter()
    for _ in range(5):
        jax.block_until_ready(jf.classify(res).status)
    t_classify = (time.perf_counter() - t0) / 5
    print(f"flow {t_flow:.1f} s (first call {first:.1f} s), classify {t_classify * 1e3:.1f} ms")

    by_horizon, per_landscape = {}, {}
    for T in args.horizons:
        st = np.array([jf.Status(s).name for s in np.asarray(jf.classify(res, horizon=T).status)])
        by_horizon[f"{T:g}"] = summarise(fates, st, families)
        per_landscape[f"{T:g}"] = {
            ls.name: {s: int(np.sum(st[names == ls.name] == s)) for s in STATUSES
                      if np.any(st[names == ls.name] == s)}
            for ls in C.LANDSCAPES
        }
    extended = None
    if args.extend and "extend_undecided" in jf.FlowOptions.__dataclass_fields__:
        t0 = time.perf_counter()
        res_x = jf.flow(problem, xs, t1=args.t1, extend_undecided=args.extend)
        jax.block_until_ready(res_x.x)
        t_ext = time.perf_counter() - t0
        st = np.array([jf.Status(s).name for s in np.asarray(jf.classify(res_x).status)])
        extended = summarise(fates, st, families)
        extended["seconds_with_compile"] = t_ext
        decided_at = np.asarray(res_x.decided_at)
        extended["decided_at"] = {f"{h:g}": int(np.sum(decided_at == h))
                                  for h in np.unique(decided_at[np.isfinite(decided_at)])}
        by_horizon[f"{args.extend:g} (extend_undecided)"] = extended
        per_landscape[f"{args.extend:g} (extend_undecided)"] = {
            ls.name: {s: int(np.sum(st[names == ls.name] == s)) for s in STATUSES
                      if np.any(st[names == ls.name] == s)}
            for ls in C.LANDSCAPES
        }

    rows = []
    for h, s in by_horizon.items():
        for fate in (C.ESCAPING, C.BOUNDED):
            row = {"horizon": h, "reference": fate}
            row.update({k: v for k, v in s["confusion"][fate].items()})
            rows.append(row)
    md = markdown_table(rows, ["horizon", "reference", *STATUSES])
    md += "\n\n" + markdown_table(
        [{"horizon": h, "escaping recall": s["escaping_recall"],
          "worst family": min(s["escaping_recall_by_family"].items(), key=lambda kv: kv[1])[0],
          "worst recall": min(s["escaping_recall_by_family"].values()),
          "UNDECIDED share": s["undecided_share"],
          "escaping -> bounded/converged": s["escaping_called_bounded_or_converged"],
          "bounded -> escaping": s["bounded_called_escaping"]} for h, s in by_horizon.items()],
        ["horizon", "escaping recall", "worst family", "worst recall", "UNDECIDED share",
         "escaping -> bounded/converged", "bounded -> escaping"],
    )
    md += f"\n\nclassification {t_classify * 1e3:.1f} ms vs integration {t_flow:.1f} s " \
          f"({100 * t_classify / t_flow:.2f} %)"
    payload = dict(
        benchmark="detector_catalogue",
        note="machine shared with other jobs",
        tag=args.tag,
        per_landscape=args.per_landscape,
        n=int(len(idx)),
        landscapes=len(C.LANDSCAPES),
        t1=args.t1,
        dtype="float32",
        solver=f"auto ({res.meta['solver']})",
        flow_seconds=t_flow,
        classify_seconds=t_classify,
        classify_share_of_integration=t_classify / t_flow,
        by_horizon=by_horizon,
        per_landscape_status=per_landscape,
        reference_checks={k: v["agrees_with_catalogue"] for k, v in ref["landscapes"].items()},
        reference_t_end=ref["t_end"],
    )
    name = "detector_catalogue" + (f"-{args.tag}" if args.tag else "")
    write_results(name, payload, md, smoke=args.smoke)


if __name__ == "__main__":
    main()
