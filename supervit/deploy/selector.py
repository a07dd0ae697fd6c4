"""The budget selector: operating points (accuracy x GMACs x measured latency), Pareto sets, the best under a budget.

An operating point is a dict ``{"img_size", "keep_ratio", "acc1", "acc5", "gmacs", "latency_ms", "noisy"}``
(``latency_ms`` None without a profile).
"""
from __future__ import annotations

from . import DeployError


def _label(point: dict) -> str:
    return f"({point['img_size']}, {point['keep_ratio']:g})"


def operating_points(table: dict, gmacs: dict, profile: dict | None = None) -> list[dict]:
    """One point per sub-network of ``gmacs`` ({(s, r): GMACs}) that the accuracy table has a row for, with its
    accuracy and (optional) latency.

    A table may cover only some of the model's sub-networks (a run trained with ``--subnets`` evaluates those):
    the points are those. Raises ``DeployError`` when the table covers none of them.
    """
    acc = {(r["img_size"], r["keep_ratio"]): r for r in table["rows"]}
    timed = {(r["img_size"], r["keep_ratio"]): r for r in profile["rows"]} if profile else {}
    covered = [sub for sub in gmacs if sub in acc]
    if not covered:
        raise DeployError(f"the accuracy table ({table['label']}) has no row for sub-network(s) "
                          + ", ".join(f"({s}, {r:g})" for s, r in gmacs)
                          + "; it covers " + ", ".join(f"({s}, {r:g})" for s, r in acc))
    points = []
    for sub in covered:
        row = timed.get(sub)
        points.append({"img_size": sub[0], "keep_ratio": sub[1], "acc1": acc[sub]["acc1"],
                       "acc5": acc[sub].get("acc5"), "gmacs": gmacs[sub],
                       "latency_ms": row["latency_ms"] if row else None,
                       "noisy": row.get("noisy", False) if row else False})
    return points


def table_subnets(table: dict, subnets) -> list:
    """The sub-networks of ``subnets`` that the accuracy table has a row for (in the order of ``subnets``)."""
    rows = {(r["img_size"], r["keep_ratio"]) for r in table["rows"]}
    return [sub for sub in subnets if (sub[0], sub[1]) in rows]


def pareto_front(points: list[dict], cost: str) -> list[dict]:
    """The points no other point beats: none is at least as accurate and at most as costly with one strict.

    Args:
        cost: ``"latency_ms"`` or ``"gmacs"``. Returned in ascending cost.
    """
    if any(p[cost] is None for p in points):
        raise DeployError(f"a Pareto set over {cost} needs every point's {cost}; profile the model first")
    front = []
    for p in points:
        dominated = any(q[cost] <= p[cost] and q["acc1"] >= p["acc1"] and (q[cost] < p[cost] or q["acc1"] > p["acc1"])
                        for q in points)
        if not dominated:
            front.append(p)
    return sorted(front, key=lambda p: (p[cost], -p["acc1"]))


def choose(points: list[dict], latency_ms: float | None = None, gmacs: float | None = None,
           min_accuracy: float | None = None) -> dict:
    """The operating point for exactly one budget.

    * ``latency_ms``: the most accurate point whose measured latency is within the budget (ties: the faster).
    * ``gmacs``: the most accurate point within the GMACs budget (ties: the cheaper).
    * ``min_accuracy``: the cheapest point (by latency when measured, else GMACs) with top-1 >= the floor.
    Raises ``DeployError`` naming the budget and what the points offer when none meets it.
    """
    given = {k: v for k, v in (("latency_ms", latency_ms), ("gmacs", gmacs), ("min_accuracy", min_accuracy))
             if v is not None}
    if len(given) != 1:
        raise DeployError("give exactly one budget: --budget-ms, --budget-gmacs or --min-accuracy "
                          f"(got {sorted(given) or 'none'})")
    (kind, value), = given.items()
    if not isinstance(value, (int, float)) or value != value or value <= 0:
        raise DeployError(f"the {kind} budget must be a positive number, got {value!r}")
    if kind == "min_accuracy":
        cost = "latency_ms" if all(p["latency_ms"] is not None for p in points) else "gmacs"
        fits = [p for p in points if p["acc1"] >= value]
        if not fits:
            best = max(points, key=lambda p: p["acc1"])
            raise DeployError(f"no sub-network reaches top-1 {value:g}%: the most accurate is {_label(best)} at "
                              f"{best['acc1']:.2f}%")
        return min(fits, key=lambda p: (p[cost], -p["acc1"]))
    if kind == "latency_ms" and any(p["latency_ms"] is None for p in points):
        raise DeployError("a latency budget needs measured latencies: profile the model (or pass --profile FILE)")
    fits = [p for p in points if p[kind] <= value]
    if not fits:
        fastest = min(points, key=lambda p: p[kind])
        unit = "ms" if kind == "latency_ms" else "GMACs"
        raise DeployError(f"no sub-network fits {kind.replace('_ms', '')} <= {value:g} {unit}: the cheapest is "
                          f"{_label(fastest)} at {fastest[kind]:.4g} {unit}")
    return max(fits, key=lambda p: (p["acc1"], -p[kind]))


def format_points(points: list[dict], chosen: dict | None = None) -> str:
    """Markdown table of the points with the Pareto sets marked (L: vs latency, G: vs GMACs) and the choice."""
    has_latency = all(p["latency_ms"] is not None for p in points)
    on_g = {(p["img_size"], p["keep_ratio"]) for p in pareto_front(points, "gmacs")}
    on_l = {(p["img_size"], p["keep_ratio"]) for p in pareto_front(points, "latency_ms")} if has_latency else set()
    head = ["img_size", "keep", "top-1 %", "top-5 %", "GMACs"] + (["latency ms"] if has_latency else [])
    lines = ["| " + " | ".join(head + ["Pareto", "choice"]) + " |", "|" + "---|" * (len(head) + 2)]
    for p in sorted(points, key=lambda p: (p["img_size"], p["keep_ratio"])):
        sub = (p["img_size"], p["keep_ratio"])
        cells = [str(p["img_size"]), f"{p['keep_ratio']:g}", f"{p['acc1']:.2f}",
                 "-" if p.get("acc5") is None else f"{p['acc5']:.2f}", f"{p['gmacs']:.4g}"]
        if has_latency:
            cells.append(f"{p['latency_ms']:.3g}" + (" (noisy)" if p.get("noisy") else ""))
        marks = "".join(m for m, on in (("L", sub in on_l), ("G", sub in on_g)) if on)
        is_choice = chosen is not None and sub == (chosen["img_size"], chosen["keep_ratio"])
        lines.append("| " + " | ".join(cells + [marks or "", "<= chosen" if is_choice else ""]) + " |")
    return "\n".join(lines)
