"""Resource envelope, kind registry, store keys and the JSON codec.

A resource's identity is its kind plus its *path*: ``(name,)`` for global kinds,
``(namespace, name)`` for namespaced ones, and ``(cluster, namespace, name)``
for per-cluster records such as :class:`~atoll.model.service.ServiceExport`.
The store key is ``/atoll/v1/<plural>/<path...>``: every segment is a DNS label,
so keys never need escaping and a prefix selects a subtree (all exports of one
cluster, say).

``metadata.revision`` is the store's modification revision of the object. It is
*not* stored inside the value (a value cannot know the revision its own write
will get); :func:`decode` fills it in from the store entry, and writes use it
for compare-and-swap.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from atoll.errors import InvalidError
from atoll.model.names import DnsLabel

__all__ = [
    "KINDS",
    "Condition",
    "Frozen",
    "Metadata",
    "Resource",
    "decode",
    "encode",
    "kind_by_name",
    "kind_by_plural",
    "register",
    "store_key",
    "store_prefix",
]

ROOT = "/atoll/v1/"


class Frozen(BaseModel):
    """Immutable, strict-about-unknown-fields base for every schema."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Metadata(Frozen):
    name: DnsLabel
    namespace: DnsLabel | None = None
    revision: int = Field(0, ge=0, description="store modification revision; 0 = never stored")
    created_revision: int = Field(0, ge=0, description="store revision that created the object")
    labels: dict[str, str] = Field(default_factory=dict)
    owner: str | None = Field(None, description="the component that writes this object")


class Condition(Frozen):
    """A Kubernetes-style status condition."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""


class Resource(Frozen):
    """Base of every kind. Subclasses set ``KIND``, ``PLURAL`` and ``PATH``."""

    KIND: ClassVar[str]
    PLURAL: ClassVar[str]
    #: names of the path segments, outermost first; the last one is metadata.name
    PATH: ClassVar[tuple[str, ...]] = ("name",)
    #: derived kinds are computed by the control plane, never written through the API
    DERIVED: ClassVar[bool] = False

    kind: str
    metadata: Metadata

    def path(self) -> tuple[str, ...]:
        """The identifying path; namespaced kinds override via ``PATH``."""
        if self.PATH == ("name",):
            return (self.metadata.name,)
        if self.PATH == ("namespace", "name"):
            return (self.metadata.namespace or "default", self.metadata.name)
        raise NotImplementedError(f"{type(self).__name__} must define path()")

    def key(self) -> str:
        return store_key(type(self), self.path())

    def with_revision(self: R, revision: int, created_revision: int) -> R:
        meta = self.metadata.model_copy(
            update={"revision": revision, "created_revision": created_revision}
        )
        return self.model_copy(update={"metadata": meta})


R = TypeVar("R", bound=Resource)

KINDS: dict[str, type[Resource]] = {}
_BY_PLURAL: dict[str, type[Resource]] = {}


def register(cls: type[R]) -> type[R]:
    """Class decorator adding a kind to the registry."""
    KINDS[cls.KIND] = cls
    _BY_PLURAL[cls.PLURAL] = cls
    return cls


def kind_by_name(kind: str) -> type[Resource]:
    from atoll.errors import NotFoundError

    try:
        return KINDS[kind]
    except KeyError:
        raise NotFoundError(f"unknown kind {kind!r}; known: {', '.join(sorted(KINDS))}") from None


def kind_by_plural(plural: str) -> type[Resource]:
    from atoll.errors import NotFoundError

    try:
        return _BY_PLURAL[plural]
    except KeyError:
        raise NotFoundError(
            f"unknown resource type {plural!r}; known: {', '.join(sorted(_BY_PLURAL))}"
        ) from None


def store_prefix(cls: type[Resource], *outer: str) -> str:
    """Key prefix selecting every object of ``cls`` (optionally under ``outer`` path)."""
    return ROOT + cls.PLURAL + "/" + "".join(f"{seg}/" for seg in outer)


def store_key(cls: type[Resource], path: tuple[str, ...]) -> str:
    if len(path) != len(cls.PATH):
        raise ValueError(f"{cls.KIND} path needs {cls.PATH}, got {path}")
    return ROOT + cls.PLURAL + "/" + "/".join(path)


_STORE_EXCLUDE: Any = {"metadata": {"revision", "created_revision"}}


def encode(resource: Resource, *, for_store: bool = True) -> bytes:
    """JSON bytes of ``resource``; store form omits the store-assigned revisions."""
    return resource.model_dump_json(
        exclude=_STORE_EXCLUDE if for_store else None, exclude_none=False
    ).encode()


def decode(
    cls: type[R], data: bytes, *, revision: int | None = None, created_revision: int = 0
) -> R:
    """Parse and validate JSON bytes as ``cls``; raise :class:`InvalidError` naming the field."""
    try:
        obj = cls.model_validate_json(data)
    except ValidationError as exc:
        raise invalid_from(exc, cls.KIND) from exc
    if obj.kind != cls.KIND:
        raise InvalidError(f"kind is {obj.kind!r}, expected {cls.KIND!r}", field="kind")
    if revision is not None:
        obj = obj.with_revision(revision, created_revision)
    return obj


def invalid_from(exc: ValidationError, what: str) -> InvalidError:
    """Translate pydantic's error into one readable line naming the first bad field."""
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(body)"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return InvalidError(f"{what}: {loc}: {first['msg']}{more}", field=loc)
