"""Errors a user can act on. Each message names the problem and, where it can, the fix."""
import difflib


class GandidError(Exception):
    """Base class: the CLI prints these as one clean message instead of a traceback."""


class UnknownNameError(GandidError, KeyError):
    """A name (plugin, layer, option, class) that does not exist, with the closest valid names."""

    def __init__(self, what, name, choices):
        self.what, self.name, self.choices = what, name, sorted(choices)
        super().__init__(what, name)

    def __str__(self):
        close = difflib.get_close_matches(str(self.name), [str(c) for c in self.choices], n=3, cutoff=0.5)
        msg = f"unknown {self.what} {self.name!r}"
        if close:
            msg += "; did you mean " + " or ".join(repr(c) for c in close) + "?"
        if self.choices:
            shown = ", ".join(str(c) for c in self.choices[:20])
            more = f" (+{len(self.choices) - 20} more)" if len(self.choices) > 20 else ""
            msg += f" Valid: {shown}{more}."
        else:
            msg += f" (no {self.what} is available)"
        return msg


class DuplicateNameError(GandidError):
    def __init__(self, kind, name, first_plugin, second_plugin):
        self.kind, self.name = kind, name
        self.first_plugin, self.second_plugin = first_plugin, second_plugin
        super().__init__(
            f"{kind} name {name!r} registered by plugin {second_plugin!r} is already registered by "
            f"plugin {first_plugin!r}; the second registration is refused (rename one of them)"
        )


class ConfigError(GandidError):
    """Invalid run configuration; raised before any work starts."""


class OutputExistsError(GandidError):
    pass


class CheckpointError(GandidError):
    """A weights file that does not match the expected layout."""


class DiskFullError(GandidError):
    """A write failed because the disk, a quota or a file-size limit is full; what was written before stays."""


class FusedOpUnavailable(GandidError):
    """The fused op could not be built or loaded and the run asked for it (``--require-fused``)."""
