"""Compare candidate flag rules offline on per-epoch margins dumped by eval_detection.py --dump.

    python tools/eval_detection.py --seeds 100-104 --dump /tmp/tune   # tuning seeds only
    python tools/tune_rules.py /tmp/tune

Prints, per setting, the mean F1 of each candidate (rules x epoch ranges x run combination) and
the oracle (true number of flips on the mean-AUM ranking). Epoch ranges: ``all``, ``auto`` (up
to the threshold median's minimum: the rule before) and ``climb`` (``flag --epochs auto``: up to
where its climb is measurable). ``combined/climb`` is flag's default (the joint fit, one cut of
the mean-AUM ranking on the runs' lowest posteriors); ``joint/climb/and`` the default before it
(the same fit, a cut per run, flagged in every run); ``default/auto/and`` the one before that
(one fit per run, no pooled spread, epochs up to the minimum). Used to choose
the default rule; the reported numbers come from eval_detection.py on other seeds.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from aum_replay.auto_epochs import choose_epochs
from aum_replay.rules import (
    capped_mixture_cut,
    combined_mixture_flags,
    estimate_noise_fraction,
    expected_f1_cut,
    joint_mixture_cuts,
    mixture_f1_cut,
    replication_alpha,
)
from aum_replay.threshold import combine_flags


def f1(flag: np.ndarray, truth: np.ndarray) -> float:
    tp = (flag & truth).sum()
    return 2 * tp / (flag.sum() + truth.sum()) if flag.sum() + truth.sum() else 0.0


def rank_cut(aum: np.ndarray, k: int) -> float:
    v = np.sort(aum[np.isfinite(aum)])
    k = int(np.clip(k, 0, len(v)))
    return float(v[k - 1]) if k else -np.inf


def cuts(aum: np.ndarray, thr: np.ndarray) -> dict[str, float]:
    t = aum[thr]
    s = aum[~thr]
    n = len(s)
    out = {
        "paper": float(np.percentile(t, 99)),
        "p95": float(np.percentile(t, 95)),
        "replication": replication_alpha(t),
    }
    pi_med = min(1.0, 2 * np.mean(s <= np.median(t)))
    out["pimed-rank"] = rank_cut(s, round(pi_med * n))
    pi = estimate_noise_fraction(s, t)
    out["pimin-rank"] = rank_cut(s, round(pi * n))
    out["ef1"] = expected_f1_cut(s, t)[0]
    out["valley"] = valley(s, t)
    out["gmm"] = gmm_cut(s, t, False)
    out["gmm-ef1"] = gmm_cut(s, t, True)
    out["max"] = max(out["gmm-ef1"], out["ef1"])
    out["mixture"] = mixture_f1_cut(s, t)[0]  # the default before capping (one start)
    # the default before its background component: two Gaussians only, capped the same way
    out["two-gaussian"] = capped_mixture_cut(s, t, background=False).alpha
    out["default"] = capped_mixture_cut(s, t).alpha
    return out


def kde(s: np.ndarray, grid: np.ndarray) -> np.ndarray:
    h = 0.9 * min(s.std(), (np.percentile(s, 75) - np.percentile(s, 25)) / 1.34) * len(s) ** -0.2
    z = (grid[:, None] - s[None, :]) / h
    return np.exp(-0.5 * z * z).sum(1)


def valley(s: np.ndarray, t: np.ndarray) -> float:
    grid = np.linspace(np.median(t), s.max(), 400)
    dens = kde(s, grid)
    mode = int(np.argmax(dens))
    if mode == 0:
        return float(np.median(t))
    return float(grid[int(np.argmin(dens[: mode + 1]))])


def gmm_cut(s: np.ndarray, t: np.ndarray, ef1: bool) -> float:
    mu = np.array([np.median(t), np.median(s[s > np.median(t)])])
    sd = np.array([s.std(), s.std()]) / 2
    w = np.array([0.3, 0.7])
    for _ in range(200):
        dens = w / sd * np.exp(-0.5 * ((s[:, None] - mu) / sd) ** 2)
        post = dens / dens.sum(1, keepdims=True)
        w = post.mean(0)
        mu = (post * s[:, None]).sum(0) / post.sum(0)
        sd = np.sqrt((post * (s[:, None] - mu) ** 2).sum(0) / post.sum(0)) + 1e-6
    lo = int(np.argmin(mu))
    p = post[:, lo]
    order = np.argsort(s)
    if ef1:
        ps = p[order]
        tp = np.cumsum(ps)
        k = np.arange(1, len(s) + 1)
        f = 2 * tp / (k + ps.sum())
        return float(s[order][int(np.argmax(f))])
    below = s[(p >= 0.5)]
    return float(below.max()) if len(below) else -np.inf


def main(root: Path) -> None:
    table: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(root.glob("*.npz")):
        setting = path.name.split(".seed")[0]
        d = np.load(path)
        flipped = d["flipped"]
        for span in ("all", "auto", "climb"):
            aums, thrs = [], []
            for k in (1, 2):
                m = d[f"margins{k}"].astype(np.float64)
                thr = d[f"threshold{k}"]
                if span != "all":  # "auto": the minimum (the rule before); "climb": flag's
                    stop = "turn" if span == "auto" else "climb"
                    chosen = choose_epochs(list(range(len(m))), m[:, thr], stop=stop).epochs
                    m = m[chosen]
                    if k == 1:
                        table[setting][f"{span}_len"].append(len(chosen))
                aums.append(m.mean(axis=0))
                thrs.append(thr)
            aum = np.array(aums)
            thr = np.array(thrs)
            scored = ~thr
            mean = np.where(scored, aum, 0).sum(0) / scored.sum(0)
            order = np.argsort(mean, kind="stable")
            oracle = np.zeros(len(flipped), bool)
            oracle[order[: flipped.sum()]] = True
            table[setting][f"oracle/{span}"].append(f1(oracle, flipped))
            # the default before: one fit of both runs (shared weights, pooled spread), cut per run
            for name, pool in (("joint", True), ("joint-unpooled", False)):
                fits = joint_mixture_cuts(
                    [aum[r, scored[r]] for r in range(2)],
                    [aum[r, thr[r]] for r in range(2)],
                    pool_spread=pool,
                )
                flags = np.array([(aum[r] <= fits[r].alpha) & scored[r] for r in range(2)])
                both = combine_flags(flags, scored)
                table[setting][f"{name}/{span}/and"].append(f1(both, flipped))
            # flag's default: the same joint fit, one expected-F1 cut of the mean-AUM ranking
            combined = combined_mixture_flags(aum, scored, thr)
            table[setting][f"combined/{span}"].append(f1(combined.flagged, flipped))
            if span == "climb":
                continue  # the per-run candidates below: on all and auto epochs
            per_run = [cuts(aum[r], thr[r]) for r in range(2)]
            for name in per_run[0]:
                flags = np.array([(aum[r] <= per_run[r][name]) & ~thr[r] for r in range(2)])
                both = combine_flags(flags, scored)
                table[setting][f"{name}/{span}/and"].append(f1(both, flipped))
                if name in ("pimin-rank", "ef1"):
                    # rank-average combination: mean per-run ECDF score, cut at mean estimate
                    u = np.full(aum.shape, np.nan)
                    for r in range(2):
                        s = aum[r, scored[r]]
                        u[r, scored[r]] = np.searchsorted(np.sort(s), s, side="right") / len(s)
                    score = np.nanmean(u, axis=0)
                    frac = np.mean([flags[r][scored[r]].mean() for r in range(2)])
                    k = round(frac * len(flipped))
                    pick = np.zeros(len(flipped), bool)
                    pick[np.argsort(score, kind="stable")[:k]] = True
                    table[setting][f"{name}/{span}/rank"].append(f1(pick, flipped))
    keys = sorted({k for v in table.values() for k in v})
    for setting, row in table.items():
        print(setting)
        for key in keys:
            if key in row:
                print(f"   {key:28s} {np.mean(row[key]):.3f}  (min {np.min(row[key]):.3f})")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
