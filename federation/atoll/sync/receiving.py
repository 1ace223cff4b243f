"""The client side of the sync protocol: accept or reject a delta, atomically.

:class:`HeldState` is the immutable set of resources a subscriber holds, per
type. :func:`apply_delta` decides a delta against it: every resource in the
delta is validated (decoded with its kind's schema, then checked by the
subscriber's own validator); if *any* fails, the whole delta is rejected
(NACK with the reason and the offending names) and the held state stays as
it was — a subscriber never runs on a half-applied config. Otherwise the new
state is returned together with an ACK. Pure: no I/O, tested without sockets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from atoll.errors import AtollError
from atoll.sync.pushing import Push
from atoll.sync.table import Item

__all__ = ["Decision", "HeldState", "Validator", "apply_delta"]

#: raises (any AtollError or ValueError) to reject one resource body
Validator = Callable[[str, Item], None]


def _no_types() -> Mapping[str, Mapping[str, Item]]:
    return MappingProxyType({})


def _no_versions() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class HeldState:
    """type -> name -> item, plus the system version last accepted per type."""

    types: Mapping[str, Mapping[str, Item]] = field(default_factory=_no_types)
    system_versions: Mapping[str, str] = field(default_factory=_no_versions)

    def items(self, type_: str) -> Mapping[str, Item]:
        return self.types.get(type_, MappingProxyType({}))

    def versions(self, type_: str) -> dict[str, str]:
        return {name: it.version for name, it in self.items(type_).items()}

    def with_type(self, type_: str, items: Mapping[str, Item], system_version: str) -> HeldState:
        types = dict(self.types)
        types[type_] = MappingProxyType(dict(items))
        versions = dict(self.system_versions)
        versions[type_] = system_version
        return HeldState(types=MappingProxyType(types), system_versions=MappingProxyType(versions))


@dataclass(frozen=True, slots=True)
class Decision:
    state: HeldState
    #: None = ACK; otherwise the NACK's message
    error: str | None = None
    bad_resources: tuple[str, ...] = ()

    @property
    def accepted(self) -> bool:
        return self.error is None


def apply_delta(state: HeldState, push: Push, validate: Validator) -> Decision:
    current = state.items(push.type)
    errors: list[str] = []
    bad: list[str] = []
    for item in push.resources:
        try:
            validate(push.type, item)
        except (AtollError, ValueError) as exc:
            errors.append(f"{item.name}@{item.version}: {exc}")
            bad.append(item.name)
    if errors:
        more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
        return Decision(state=state, error="; ".join(errors[:3]) + more, bad_resources=tuple(bad))
    merged = dict(current)
    for name in push.removed:
        merged.pop(name, None)
    for item in push.resources:
        merged[item.name] = item
    return Decision(state=state.with_type(push.type, merged, push.system_version))
