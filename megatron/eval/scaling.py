"""Scaling-law fits: L(N) = (N_c/N)^alpha_N, L(D) = (D_c/D)^alpha_D (Kaplan et al. 2020) and
L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, "Chinchilla", approach 3), with
bootstrap confidence intervals and the compute-optimal N and D for a budget C = 6 N D.

Fitting, as Chinchilla did for the joint form: minimise the Huber loss (delta 1e-3) of
log-residuals LSE(a - alpha log N, b - beta log D, e) - log L over (a, b, e, alpha, beta), with
A = exp(a), B = exp(b), E = exp(e), by L-BFGS (scipy) from a grid of starting points, keeping the
best. The single-variable power laws are linear in log space (log L = alpha log N_c - alpha log N)
and are fitted by least squares on the logs (or the same Huber loss with --huber). Bootstrap:
resample runs with replacement, refit (from the full-data optimum plus the grid's best few
starts), report percentile intervals.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

HUBER_DELTA = 1e-3
# search ranges of the joint fit (a = log A, b = log B, e = log E), as L-BFGS-B bounds
JOINT_BOUNDS = {"a": (-10, 60), "b": (-10, 60), "e": (-5, 5), "alpha": (1e-3, 3), "beta": (1e-3, 3)}

# Hoffmann et al. 2022, approach 3 (their eq. 10): the published, rounded coefficients.
CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


# ---------------------------------------------------------------------------------------------
# the laws


def joint_loss(n, d, E, A, B, alpha, beta):
    n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
    return E + A / n ** alpha + B / d ** beta


def power_loss(x, x_c, exponent):
    return (x_c / np.asarray(x, dtype=float)) ** exponent


def compute_optimal(C: float, E: float, A: float, B: float, alpha: float, beta: float) -> dict:
    """argmin L(N, D) subject to 6 N D = C (Chinchilla's eq. 4):
    N_opt = G (C/6)^a, D_opt = G^-1 (C/6)^b, G = (alpha A / (beta B))^(1/(alpha+beta)),
    a = beta/(alpha+beta), b = alpha/(alpha+beta)."""
    G = (alpha * A / (beta * B)) ** (1.0 / (alpha + beta))
    a = beta / (alpha + beta)
    n = G * (C / 6.0) ** a
    d = (C / 6.0) ** (1.0 - a) / G
    return {"C": C, "N_opt": n, "D_opt": d, "a": a, "b": 1.0 - a,
            "loss": float(joint_loss(n, d, E, A, B, alpha, beta)), "tokens_per_param": d / n}


# ---------------------------------------------------------------------------------------------
# fitting


def _huber(r, delta):
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def _joint_objective(theta, x, y, logl, delta):
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * x, b - beta * y, np.full_like(x, e)])
    m = terms.max(axis=0)
    w = np.exp(terms - m)
    s = w.sum(axis=0)
    pred = m + np.log(s)
    w = w / s
    r = pred - logl
    g = np.clip(r, -delta, delta)  # dHuber/dr
    grad = np.array([np.sum(g * w[0]), np.sum(g * w[1]), np.sum(g * w[2]),
                     -np.sum(g * w[0] * x), -np.sum(g * w[1] * y)])
    return float(np.sum(_huber(r, delta))), grad


def _minimise(theta0, x, y, logl, delta):
    from scipy.optimize import minimize
    res = minimize(_joint_objective, np.asarray(theta0, dtype=float), args=(x, y, logl, delta),
                   jac=True, method="L-BFGS-B", bounds=list(JOINT_BOUNDS.values()),
                   options={"ftol": 1e-15, "gtol": 1e-13, "maxiter": 5000})
    return res.fun, res.x


DEFAULT_GRID = {"a": (0.0, 5.0, 10.0, 20.0), "b": (0.0, 5.0, 10.0, 20.0), "e": (-1.0, 0.0, 1.0),
                "alpha": (0.2, 0.5, 1.0), "beta": (0.2, 0.5, 1.0)}


@dataclass
class JointFit:
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float
    n_points: int
    ci: dict = field(default_factory=dict)  # name -> (lo, hi)
    samples: dict = field(default_factory=dict)  # name -> np.ndarray of bootstrap estimates

    @property
    def params(self) -> dict:
        return {"E": self.E, "A": self.A, "B": self.B, "alpha": self.alpha, "beta": self.beta}

    def predict(self, n, d):
        return joint_loss(n, d, **self.params)

    def compute_optimal(self, C: float) -> dict:
        out = {k: float(v) for k, v in compute_optimal(C, **self.params).items()}
        if self.samples:
            draws = [compute_optimal(C, *vals) for vals in zip(
                *(self.samples[k] for k in ("E", "A", "B", "alpha", "beta")))]
            for key in ("N_opt", "D_opt", "loss"):
                vals = np.array([dr[key] for dr in draws])
                out[key + "_ci"] = _percentile_ci(vals, self.ci.get("level", 0.95))
        return out


def _theta_to_params(theta):
    a, b, e, alpha, beta = theta
    return {"E": math.exp(e), "A": math.exp(a), "B": math.exp(b), "alpha": float(alpha),
            "beta": float(beta)}


def _fit_joint_theta(x, y, logl, delta, starts):
    best = (math.inf, None)
    for t0 in starts:
        f, t = _minimise(t0, x, y, logl, delta)
        if f < best[0]:
            best = (f, t)
    return best


def fit_joint(n, d, loss, *, delta: float = HUBER_DELTA, grid: dict | None = None,
              max_starts: int = 64, bootstrap: int = 0, level: float = 0.95,
              seed: int = 0) -> JointFit:
    """Chinchilla's approach 3 on runs (n parameters, d tokens, final loss). L-BFGS runs from the
    `max_starts` grid points with the lowest initial objective (all of them with 0)."""
    n, d, loss = (np.asarray(v, dtype=float) for v in (n, d, loss))
    if not (len(n) == len(d) == len(loss)):
        raise ValueError("n, d and loss must have the same length")
    if len(n) < 5:
        raise ValueError(f"the joint fit has 5 parameters; got only {len(n)} runs")
    if np.any(loss <= 0) or np.any(n <= 0) or np.any(d <= 0):
        raise ValueError("n, d and loss must be positive")
    x, y, logl = np.log(n), np.log(d), np.log(loss)
    g = grid or DEFAULT_GRID
    starts = list(itertools.product(g["a"], g["b"], g["e"], g["alpha"], g["beta"]))
    # keep the few best starts by objective at the start, plus all optimised results
    scored = sorted(starts, key=lambda t: _joint_objective(np.array(t), x, y, logl, delta)[0])
    if max_starts:
        scored = scored[:max_starts]
    results = [(_minimise(t, x, y, logl, delta), t) for t in scored]
    results.sort(key=lambda r: r[0][0])
    (fbest, tbest), _ = results[0]
    fit = JointFit(objective=float(fbest), n_points=len(n), **_theta_to_params(tbest))
    if bootstrap:
        rng = np.random.default_rng(seed)
        # warm starts: the full-data optimum and the distinct best local optima
        warm = [tbest] + [r[0][1] for r in results[1:4]]
        draws = {k: [] for k in ("E", "A", "B", "alpha", "beta")}
        for _ in range(bootstrap):
            idx = rng.integers(0, len(n), size=len(n))
            if len(set(idx)) < 5:
                continue
            _, t = _fit_joint_theta(x[idx], y[idx], logl[idx], delta, warm)
            for k, v in _theta_to_params(t).items():
                draws[k].append(v)
        fit.samples = {k: np.array(v) for k, v in draws.items()}
        fit.ci = {k: _percentile_ci(v, level) for k, v in fit.samples.items()}
        fit.ci["level"] = level
    return fit


@dataclass
class PowerFit:
    """L(x) = (x_c / x)^exponent."""
    x_c: float
    exponent: float
    n_points: int
    ci: dict = field(default_factory=dict)

    def predict(self, x):
        return power_loss(x, self.x_c, self.exponent)


def _fit_power_once(lx, ll, huber: bool, delta: float):
    # log L = c - exponent * log x, c = exponent * log x_c
    A = np.stack([np.ones_like(lx), -lx], axis=1)
    (c, k), *_ = np.linalg.lstsq(A, ll, rcond=None)
    if huber:
        from scipy.optimize import minimize

        def obj(t):
            r = t[0] - t[1] * lx - ll
            gr = np.clip(r, -delta, delta)
            return float(np.sum(_huber(r, delta))), np.array([gr.sum(), -(gr * lx).sum()])
        c, k = minimize(obj, np.array([c, k]), jac=True, method="L-BFGS-B",
                        options={"ftol": 1e-15, "gtol": 1e-13}).x
    return k, math.exp(c / k) if k != 0 else math.inf


def fit_power(x, loss, *, huber: bool = False, delta: float = HUBER_DELTA, bootstrap: int = 0,
              level: float = 0.95, seed: int = 0) -> PowerFit:
    """Kaplan's L(N) = (N_c/N)^alpha_N (or L(D)), a straight line in log-log space."""
    x, loss = np.asarray(x, dtype=float), np.asarray(loss, dtype=float)
    if len(x) < 2 or len(set(x.tolist())) < 2:
        raise ValueError("a power-law fit needs at least 2 distinct x values")
    lx, ll = np.log(x), np.log(loss)
    k, xc = _fit_power_once(lx, ll, huber, delta)
    fit = PowerFit(x_c=float(xc), exponent=float(k), n_points=len(x))
    if bootstrap:
        rng = np.random.default_rng(seed)
        ks, xcs = [], []
        for _ in range(bootstrap):
            idx = rng.integers(0, len(x), size=len(x))
            if len(set(lx[idx].tolist())) < 2:
                continue
            kk, xx = _fit_power_once(lx[idx], ll[idx], huber, delta)
            ks.append(kk)
            xcs.append(xx)
        fit.ci = {"exponent": _percentile_ci(np.array(ks), level),
                  "x_c": _percentile_ci(np.array(xcs), level), "level": level}
    return fit


def _percentile_ci(values, level):
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        return (math.nan, math.nan)
    lo = 100 * (1 - level) / 2
    return (float(np.percentile(values, lo)), float(np.percentile(values, 100 - lo)))


# ---------------------------------------------------------------------------------------------
# diagnostics

def _same_compute(n, d) -> bool:
    """All runs at one compute C = 6 N D (an IsoFLOP profile): log C spreads far less than log N."""
    lc, ln = np.log(n) + np.log(d), np.log(n)
    return len(set(ln.tolist())) > 1 and float(np.std(lc)) < 0.1 * float(np.std(ln)) \
        and float(np.ptp(lc)) < math.log(1.25)


def _log_corr(n, d) -> float:
    ln, ld = np.log(n), np.log(d)
    if np.ptp(ln) == 0 or np.ptp(ld) == 0:
        return 0.0
    return float(np.corrcoef(ln, ld)[0, 1])


def diagnose(form: str, fit, n, d) -> list[str]:
    """Why a fit should not be trusted, one sentence each (empty: nothing found).

    form n / d (Kaplan's L(N) or L(D)): a negative exponent (loss rising with N or D); an
    exponent whose bootstrap interval contains 0; the other variable anti-correlated with this
    one (|corr(log N, log D)| > 0.8), in particular every run at the same compute C = 6 N D (an
    IsoFLOP profile: loss vs N is a valley there, not a power law, and a larger N means fewer
    tokens, so L(N) measures the trade-off, not the effect of size).
    form joint: a coefficient at the bound of its search range (the data do not determine it),
    N and D varying together (|corr| > 0.95: the N and D terms cannot be told apart), or fewer
    than 3 distinct N or D values."""
    n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
    out = []
    r = _log_corr(n, d)
    if form in ("n", "d"):
        X, Y = ("N", "D") if form == "n" else ("D", "N")
        name = f"L({X})"
        if fit.exponent <= 0:
            out.append(f"{name}: the fitted exponent alpha_{X} = {fit.exponent:.4g} is negative "
                       f"(loss rises with {X}): not a scaling law; the runs do not isolate {X}")
        ci = fit.ci.get("exponent")
        if ci and fit.exponent > 0 and math.isfinite(ci[0]) and ci[0] <= 0 <= ci[1]:
            out.append(f"{name}: the {100 * fit.ci.get('level', 0.95):g}% interval of alpha_{X} "
                       f"[{ci[0]:.4g}, {ci[1]:.4g}] contains 0: the data do not determine it")
        if _same_compute(n, d):
            out.append(f"{name}: every run has the same compute C = 6 N D (within "
                       f"{100 * (math.exp(float(np.ptp(np.log(n) + np.log(d)))) - 1):.2g}%), so "
                       f"a larger {X} means a smaller {Y} (corr(log N, log D) = {r:.2f}); on "
                       f"one IsoFLOP profile loss vs {X} is a valley, not a power law. Fit L({X}) "
                       f"to runs at one {Y} (or trained to convergence), or --form joint to "
                       f"runs at several budgets")
        elif r < -0.8:
            out.append(f"{name}: N and D are anti-correlated across the runs (corr(log N, log D) "
                       f"= {r:.2f}): L({X}) mixes the effect of {X} with that of fewer {Y}")
    elif form == "joint":
        theta = {"a": math.log(fit.A), "b": math.log(fit.B), "e": math.log(fit.E),
                 "alpha": fit.alpha, "beta": fit.beta}
        for k, v in theta.items():
            lo, hi = JOINT_BOUNDS[k]
            if min(abs(v - lo), abs(v - hi)) <= 1e-3 * max(1.0, abs(v)):
                shown = {"a": "A", "b": "B", "e": "E"}.get(k, k)
                value = fit.params[shown]
                out.append(f"L(N, D): {shown} = {value:.4g} is at the bound of its search range "
                           f"({k} in [{lo:g}, {hi:g}]): the data do not determine it (the fit "
                           f"is ill-posed; its compute-optimal N, D are not meaningful)")
        if abs(r) > 0.95:
            out.append(f"L(N, D): N and D vary together (corr(log N, log D) = {r:.2f}"
                       f"{', one compute budget' if _same_compute(n, d) else ''}): the N and D "
                       f"terms cannot be told apart; add runs at other sizes or budgets")
        few = [x for x, v in (("N", n), ("D", d)) if len(set(v.tolist())) < 3]
        if few:
            out.append(f"L(N, D): fewer than 3 distinct {' and '.join(few)} values: the "
                       f"exponents are barely constrained")
    return out


# ---------------------------------------------------------------------------------------------
# synthetic data


def synthetic_runs(params: dict | None = None, n_values=None, d_values=None, noise: float = 0.0,
                   seed: int = 0):
    """(n, d, loss) on a grid drawn from L(N, D) with multiplicative log-normal noise."""
    params = params or CHINCHILLA
    n_values = np.logspace(7, 10, 7) if n_values is None else np.asarray(n_values, dtype=float)
    d_values = np.logspace(9, 12, 7) if d_values is None else np.asarray(d_values, dtype=float)
    n, d = (a.ravel() for a in np.meshgrid(n_values, d_values))
    loss = joint_loss(n, d, **params)
    if noise:
        loss = loss * np.exp(np.random.default_rng(seed).normal(0.0, noise, size=loss.shape))
    return n, d, loss
