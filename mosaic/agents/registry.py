"""Registry of schedulers (aggregation policies: :mod:`mosaic.aggregation.registry`)."""

from __future__ import annotations

import inspect
from typing import Any

from mosaic.agents.interface import Scheduler
from mosaic.core.errors import ConfigError
from mosaic.core.registry import Registry

SCHEDULERS: Registry[type[Scheduler]] = Registry("scheduler")


def scheduler_options(cls: type) -> set[str]:
    """Keyword options a scheduler class accepts (following ``**kwargs`` its ``__init__`` forwards to a base
    class; a scheduler that ``wraps`` another takes that one's options)."""
    wrapped = getattr(cls, "wraps", None)
    if isinstance(wrapped, type):  # the wrapped scheduler's options and the wrapper's own
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
        return scheduler_options(wrapped) | {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD,
                                                                                  p.KEYWORD_ONLY)}  # fmt: skip
    names: set[str] = set()
    for klass in cls.__mro__[:-1]:  # object.__init__ takes nothing
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = list(inspect.signature(init).parameters.values())[1:]
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return names
    return names


def make_scheduler(name: str, **kwargs: Any) -> Scheduler:
    """Instantiate the scheduler registered as ``name`` with keyword options ``kwargs``; an option it does not
    take raises :class:`ConfigError` listing the ones it does."""
    cls = SCHEDULERS.get(name)
    valid = scheduler_options(cls)
    unknown = sorted(set(kwargs) - valid)
    if unknown:
        listed = ", ".join(sorted(valid)) or "none"
        raise ConfigError(f"scheduler {name!r} has no option {unknown[0]!r}; valid: {listed}")
    return cls(**kwargs)
