"""The operating point: one sub-network of a super-network, ``Subnet(img_size, keep_ratio)``.

Written ``SIZE:KEEP`` on command lines (``224:0.7``), ``{size}_{keep}`` in metric keys (``224_0.7_acc1``). One rule
set checks it against a model (``check_subnet``): the size must be one of the model's; the keep rate must be in
(0, 1], and one the model was trained for when ``trained=True`` (deployment, serving, training). A forward at an
untrained keep rate runs and warns once per model (``untrained_keep_message``).

Nothing here imports torch: command lines parse sub-networks before they load it.
"""
from __future__ import annotations

import math
from typing import NamedTuple

SYNTAX = "IMG_SIZE:KEEP_RATIO pairs separated by commas (e.g. 224:1,160:0.5)"


class SubnetError(ValueError):
    """A sub-network that is malformed or that the model does not have (the message names the accepted values)."""


class Subnet(NamedTuple):
    """Operating point (img_size, keep_ratio); a tuple, so ``(224, 1.0) == Subnet(224, 1.0)``."""

    img_size: int
    keep_ratio: float

    @classmethod
    def parse(cls, text: str, arg: str = "sub-network") -> "Subnet":
        """``"224:0.7"`` -> ``Subnet(224, 0.7)``; SubnetError naming ``arg`` and the syntax otherwise."""
        size, sep, keep = str(text).strip().partition(":")
        try:
            subnet = cls(int(size), float(keep))
        except ValueError:
            subnet = None
        if not sep or subnet is None or subnet.img_size < 1 or not _valid_keep(subnet.keep_ratio):
            raise SubnetError(f"{arg}: expected {SYNTAX} with IMG_SIZE >= 1 and KEEP_RATIO in (0, 1], got "
                              f"{str(text).strip()!r}")
        return subnet

    @property
    def key(self) -> str:
        """``'224_1'``, ``'128_0.5'``: the prefix of this sub-network's metric keys."""
        return f"{int(self.img_size)}_{float(self.keep_ratio):g}"

    def __str__(self) -> str:
        return f"{int(self.img_size)}:{float(self.keep_ratio):g}"


def _valid_keep(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and 0.0 < value <= 1.0


def parse_subnets(text: str, arg: str = "--subnets") -> list[Subnet]:
    """``"224:1,160:0.5"`` -> ``[Subnet(224, 1.0), Subnet(160, 0.5)]``; a pair listed twice is an error."""
    items = [item for item in str(text).split(",") if item.strip()]
    if not items:
        raise SubnetError(f"{arg}: expected {SYNTAX}, got {text!r}")
    subnets = [Subnet.parse(item, arg) for item in items]
    repeated = sorted({str(s) for s in subnets if subnets.count(s) > 1})
    if repeated:
        raise SubnetError(f"{arg}: sub-network {', '.join(repeated)} is listed twice in {text!r}")
    return subnets


def format_subnets(subnets) -> str:
    """``'224:1,160:0.5'``: the command-line form of a list of sub-networks."""
    return ",".join(str(Subnet(*s)) for s in subnets)


def _as_known(value, known: tuple):
    """``value`` replaced by the equal constant of ``known`` (unchanged when none is equal).

    Under torch.compile the comparison guards on the value, so every known sub-network is traced with constant
    arguments (one graph each) even after dynamo has made a changing int/float argument symbolic.
    """
    for constant in known:
        if value == constant:
            return constant
    return value


def check_subnet(model, img_size, keep_ratio, trained: bool = False) -> tuple[int, float]:
    """``(img_size, keep_ratio)`` of ``model`` checked by the one rule set of sub-networks.

    Args:
        model: a super-network (``img_sizes``, ``keep_ratios``).
        trained: also require a keep rate the model was trained for (else any keep rate in (0, 1] is accepted; the
            forward warns about an untrained one).
    Raises SubnetError naming the argument and the accepted values. Returns plain (int, float) (the forward's hot
    path; wrap in ``Subnet`` where a named value is wanted).
    """
    img_size, keep_ratio = _as_known(img_size, model.img_sizes), _as_known(keep_ratio, model.keep_ratios)
    if img_size not in model.img_sizes or isinstance(img_size, bool):
        raise SubnetError(f"img_size must be one of {list(model.img_sizes)}, got {img_size!r}")
    try:
        ratio = float(keep_ratio)
    except (TypeError, ValueError):
        raise SubnetError(f"keep_ratio must be a number in (0, 1], got {keep_ratio!r}") from None
    if not (math.isfinite(ratio) and 0.0 < ratio <= 1.0):
        raise SubnetError(f"keep_ratio must be in (0, 1], got {keep_ratio!r}")
    if trained and ratio not in model.keep_ratios:
        raise SubnetError(f"keep_ratio must be one of those the model was trained for "
                          f"{[float(r) for r in model.keep_ratios]}, got {keep_ratio!r}")
    return int(img_size), ratio


def check_subnets(model, subnets, trained: bool = True, arg: str = "sub-networks") -> list[Subnet]:
    """``subnets`` (all of the model's when None) checked against ``model``, as ``Subnet`` values.

    Raises SubnetError naming ``arg``, the sub-networks the model lacks and the ones it has.
    """
    if subnets is None:
        return model_subnets(model)
    out, unknown = [], []
    for subnet in subnets:
        try:
            out.append(Subnet(*check_subnet(model, *subnet, trained=trained)))
        except SubnetError:
            unknown.append(subnet)
    if unknown:
        raise SubnetError(f"{arg}: the model has no sub-network {', '.join(_describe(s) for s in unknown)}; "
                          f"accepted: {format_subnets(model_subnets(model))}")
    return out


def _describe(subnet) -> str:
    try:
        return str(Subnet(int(subnet[0]), float(subnet[1])))
    except (TypeError, ValueError, IndexError):
        return repr(subnet)


def model_subnets(model) -> list[Subnet]:
    """Every trained operating point of ``model``, grid-major (size ascending, then keep rate)."""
    return [Subnet(int(s), float(r)) for s in model.img_sizes for r in model.keep_ratios]


def untrained_keep_message(keep_ratio: float, keep_ratios) -> str:
    """The warning of a forward at a keep rate the model was not trained for."""
    return (f"keep_ratio={keep_ratio:g} is not one of the trained keep rates {list(keep_ratios)}: the sub-network "
            "runs, but the weights were not trained for it")


def largest_full(subnets) -> Subnet:
    """The largest full-keep sub-network of ``subnets`` (the best-checkpoint metric's), else the largest."""
    full = [Subnet(*s) for s in subnets if float(s[1]) == 1.0]
    return max(full or [Subnet(*s) for s in subnets])
