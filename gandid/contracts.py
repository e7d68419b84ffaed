"""Checking a plugin's object against its protocol (:class:`gandid.model.Generator`,
:class:`gandid.model.Segmenter`, :class:`gandid.analysis.Analysis`) before any work starts."""
from __future__ import annotations

from .errors import ConfigError


def protocol_members(protocol: type) -> list[str]:
    """The required members of one of gandid's protocols: annotated attributes and methods."""
    names = list(getattr(protocol, "__annotations__", {}))
    names += [n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_")]
    return list(dict.fromkeys(names))


def check_contract(obj, protocol: type, what: str) -> None:
    """Refuse a plugin's object that lacks members of its protocol, naming every one of them."""
    missing = [name for name in protocol_members(protocol) if not hasattr(obj, name)]
    if missing:
        raise ConfigError(f"{what} does not provide {', '.join(missing)} (required of a {protocol.__name__}: "
                          f"{', '.join(protocol_members(protocol))}; see the README's 'Writing a plugin')")
