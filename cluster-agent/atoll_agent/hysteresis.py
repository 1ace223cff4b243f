"""Rise/fall hysteresis: a health state changes only after it has held for a while.

Raw health flaps — a check times out once, a process restarts — and every
flap of an endpoint would otherwise flap the federation's DNS answers. As
HAProxy does with ``rise``/``fall``, a key (an endpoint, a probed cluster)
turns *down* only after ``fall`` consecutive bad observations and back *up*
only after ``rise`` consecutive good ones; observations come at a fixed
sampling interval, so the delay is ``fall * interval`` (stated in
:mod:`atoll.control.bounds`). A key seen for the first time takes its
observed state at once: there is no history to distrust.

Pure and immutable: :meth:`Hysteresis.observe` returns a new value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

__all__ = ["Hysteresis", "Tracked"]


@dataclass(frozen=True, slots=True)
class Tracked:
    up: bool
    #: consecutive observations contradicting ``up``
    streak: int = 0


def _empty() -> Mapping[str, Tracked]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Hysteresis:
    rise: int = 2
    fall: int = 3
    keys: Mapping[str, Tracked] = field(default_factory=_empty)

    def __post_init__(self) -> None:
        if self.rise < 1 or self.fall < 1:
            raise ValueError("rise and fall must be at least 1")

    def state(self, key: str) -> bool | None:
        t = self.keys.get(key)
        return None if t is None else t.up

    def observe(self, observations: Mapping[str, bool]) -> Hysteresis:
        """One sampling round: every key's raw state now. Keys not observed are dropped."""
        out: dict[str, Tracked] = {}
        for key, raw in observations.items():
            t = self.keys.get(key)
            if t is None:
                out[key] = Tracked(up=raw)
            elif raw == t.up:
                out[key] = Tracked(up=t.up)
            else:
                streak = t.streak + 1
                needed = self.rise if raw else self.fall
                out[key] = Tracked(up=raw) if streak >= needed else Tracked(up=t.up, streak=streak)
        return replace(self, keys=MappingProxyType(out))

    def states(self) -> dict[str, bool]:
        return {k: t.up for k, t in self.keys.items()}
