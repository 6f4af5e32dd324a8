"""One forwarding base for stores that wrap another store.

:class:`StoreWrapper` forwards every member of :class:`~objbutler.stores.Store`
(and ``put_if_match`` where the wrapped store has it) to ``inner``. A wrapper
subclasses it and overrides only what it changes::

    class LoggingStore(StoreWrapper):
        def get(self, key: str) -> bytes:
            log.info("get %s", key)
            return super().get(key)

A wrapper has a member exactly when the store it wraps has it: wrapping a
Swift store (no compare-and-swap) gives a store without ``put_if_match``, so
``isinstance(wrapper, CompareAndSwap)`` answers as it would for the backend.
Runtime-checkable protocols look members up on the *class*, so this is decided
when the wrapper is made: a member marked :class:`if_inner_has` is kept out of
the class, and a wrapper whose ``inner`` has it is an instance of a subclass
made once per wrapper class (same name, ``isinstance`` of the class) that adds
it. Members a subclass overrides that only some backends have are marked so
too; such an override reaches ``inner`` through ``self._cas_inner()``, not
``super()``.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, cast, overload

from objbutler.stores._base import CompareAndSwap, ObjectMeta, RangeLike, Store, StoreCapabilities

__all__ = ["StoreWrapper", "if_inner_has"]

P = ParamSpec("P")
R = TypeVar("R")
W = TypeVar("W", bound="StoreWrapper")


class if_inner_has(Generic[W, P, R]):  # noqa: N801 - used as a decorator, like property
    """Mark a wrapper method that exists only where the wrapped store has a method of that name.

    :class:`StoreWrapper` takes marked methods out of the class body and adds
    them back, in a subclass, for the wrappers whose ``inner`` has the member
    (see the module docstring), so ``hasattr`` and runtime-checkable protocols
    see the wrapper as they see the backend. Type checkers see an ordinary method.

    Parameters
    ----------
    method : callable
        The wrapper's implementation.
    """

    def __init__(self, method: Callable[Concatenate[W, P], R]) -> None:
        self.method = method
        self.name = method.__name__
        self.__doc__ = method.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> if_inner_has[W, P, R]: ...

    @overload
    def __get__(self, obj: W, owner: type | None = None) -> Callable[P, R]: ...

    def __get__(self, obj: W | None, owner: type | None = None) -> if_inner_has[W, P, R] | Callable[P, R]:
        if obj is None:
            return self
        return cast(Callable[P, R], types.MethodType(self.method, obj))


def _optional_members(cls: type) -> dict[str, Callable[..., Any]]:
    """The marked methods of ``cls`` and its bases, the most derived one of each name."""
    table: dict[str, Callable[..., Any]] = {}
    for klass in reversed(cls.__mro__):
        table.update(klass.__dict__.get("_own_optional_members", {}))
    return table


def _take_out_optional_members(cls: type) -> None:
    own = {name: value.method for name, value in list(vars(cls).items()) if isinstance(value, if_inner_has)}
    for name in own:
        delattr(cls, name)
    cls._own_optional_members = own  # type: ignore[attr-defined]
    cls._with_members = {}  # type: ignore[attr-defined]  # frozenset of names -> the subclass that has them
    cls._wrapper_class = cls  # type: ignore[attr-defined]


_NOT_FORWARDED = frozenset({"delete_many"})
"""Members a wrapper does not take from ``inner`` unless it defines them: forwarded, ``delete_many`` made
:func:`~objbutler.stores.delete_keys` skip the wrapper's own ``delete`` (a fault injector's faults, a
counter's counts, a cache's invalidation) for every batch deleted on S3."""


class StoreWrapper:
    """A store that forwards every call to ``inner``; subclass it and override what changes.

    Attributes other than the store members (a backend's ``endpoint_url``,
    ``root``, ...) are looked up on ``inner`` too. Pickling a wrapper pickles
    ``inner`` and calls the wrapper class (as written) with it on the other side (state such as
    counters starts afresh); subclasses whose constructor needs more override
    ``__reduce__``.

    Parameters
    ----------
    inner : Store
        The store that does the work (a backend or another wrapper).
    """

    _wrapper_class: type[StoreWrapper]
    """The class as written (a wrapper may be an instance of a subclass that adds optional members)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("_is_member_variant", False):
            _take_out_optional_members(cls)

    def __new__(cls, inner: Store, *args: Any, **kwargs: Any) -> Any:
        present = frozenset(name for name in _optional_members(cls) if hasattr(inner, name))
        if not present:
            return super().__new__(cls)
        variants: dict[frozenset[str], type] = cls.__dict__["_with_members"]
        variant = variants.get(present)
        if variant is None:
            members = {name: function for name, function in _optional_members(cls).items() if name in present}
            variant = type(cls.__name__, (cls,), {
                **members, "__module__": cls.__module__, "__qualname__": cls.__qualname__,
                "__doc__": cls.__doc__, "_is_member_variant": True,
            })
            variants[present] = variant
        return super().__new__(variant)

    def __init__(self, inner: Store) -> None:
        self.inner = inner

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (self._wrapper_class, (self.inner,))

    def __getattr__(self, name: str) -> Any:
        # only called for attributes the wrapper lacks; never for dunders (pickle, copy probe those)
        if name == "inner" or name in _NOT_FORWARDED or (name.startswith("__") and name.endswith("__")):
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def uri(self) -> str:
        """The wrapped store's URI."""
        return self.inner.uri

    @property
    def capabilities(self) -> StoreCapabilities:
        """The wrapped store's capabilities."""
        return self.inner.capabilities

    def get(self, key: str) -> bytes:
        """Forward ``get``."""
        return self.inner.get(key)

    def get_ranges(self, key: str, ranges: Sequence[RangeLike]) -> list[bytes]:
        """Forward ``get_ranges``."""
        return self.inner.get_ranges(key, ranges)

    def get_many(self, keys: Sequence[str]) -> list[bytes]:
        """Forward ``get_many``."""
        return self.inner.get_many(keys)

    def head(self, key: str) -> ObjectMeta:
        """Forward ``head``."""
        return self.inner.head(key)

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectMeta]:
        """Forward ``list``."""
        return self.inner.list(prefix, start_after)

    def put(self, key: str, data: bytes) -> ObjectMeta:
        """Forward ``put``."""
        return self.inner.put(key, data)

    def delete(self, key: str) -> None:
        """Forward ``delete``."""
        self.inner.delete(key)

    def put_if_absent(self, key: str, data: bytes) -> ObjectMeta:
        """Forward ``put_if_absent``."""
        return self.inner.put_if_absent(key, data)

    @if_inner_has
    def put_if_match(self, key: str, data: bytes, etag: str) -> ObjectMeta:
        """Forward ``put_if_match`` (present only when ``inner`` has it)."""
        return self._cas_inner().put_if_match(key, data, etag)

    def _cas_inner(self) -> CompareAndSwap:
        """``inner`` as a :class:`~objbutler.stores.CompareAndSwap` (for subclasses' ``put_if_match``)."""
        inner = self.inner
        if not isinstance(inner, CompareAndSwap):
            raise TypeError(f"{inner!r} has no put_if_match")
        return inner


_take_out_optional_members(StoreWrapper)
