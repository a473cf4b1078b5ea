"""Whether a fit is identified: whether the rows pin its parameters down, so that its numbers may be quoted
and feed the recommendation.

A fit is not identified when more than 5% of its bootstrap resamples failed, when a parameter (or an end
of its interval) sits at a bound of the fit's search box (the box, not the data, chose it), or when the
interval of a key quantity is unbounded. Every fit in fits.json carries the verdict as "identified" and
"reason" (one sentence).
"""

MAX_FAILED_FRACTION = 0.05
BOUND_RTOL = 1e-6  # of the box's width: closer than this to a bound counts as at it


def bound_hits(checks) -> list[str]:
    """Phrases naming the parameters at a bound of their search box. `checks` holds (name, value,
    (low, high) or None, (lo, hi)) in the parametrisation the box bounds (e.g. log E for a box on log E);
    an interval end at a bound means the box cut the resamples' spread off there."""
    hits = []
    for name, value, interval, (lo, hi) in checks:
        tol = BOUND_RTOL * (hi - lo)

        def side(x):
            if x is None:
                return None
            return "lower" if x <= lo + tol else "upper" if x >= hi - tol else None

        if side(value):
            hits.append(f"{name} at the {side(value)} bound of its search box")
        elif interval and (side(interval[0]) or side(interval[1])):
            hits.append(f"{name}'s interval reaching the {side(interval[0]) or side(interval[1])} bound of its "
                        "search box")
    return hits


def identification(n_bootstrap: int, n_failed: int, hits=(), estimates=None) -> dict:
    """{"identified", "reason"} for a fit: `n_bootstrap` resamples attempted, `n_failed` of them failed,
    `hits` from `bound_hits`, and `estimates` ({name: Estimate}) the key quantities whose intervals must
    be bounded."""
    reasons = []
    if n_bootstrap == 0:
        reasons.append("no bootstrap resamples were drawn, so it has no intervals")
    elif n_failed > MAX_FAILED_FRACTION * n_bootstrap:
        reasons.append(f"{n_failed} of {n_bootstrap} bootstrap resamples failed (more than 5%)")
    reasons += list(hits)
    unbounded = [name for name, e in (estimates or {}).items() if e.low is None or e.high is None]
    if unbounded and n_bootstrap:
        reasons.append(f"the interval of {', '.join(unbounded)} is unbounded")
    if reasons:
        return {"identified": False, "reason": "Not identified: " + "; ".join(reasons) + "."}
    return {"identified": True, "reason": f"Identified: off the bounds of its search box, with bounded intervals "
                                          f"({n_failed} of {n_bootstrap} resamples failed)."}
