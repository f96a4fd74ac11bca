"""One exception type per kind of bad input; each message names what is wrong."""


class MosaicError(Exception):
    """Base class for errors MOSAIC reports to the user."""


class ConfigError(MosaicError):
    """An invalid configuration value; the message names the field."""


class WorkloadError(MosaicError):
    """An invalid dataset, route or workload."""


class ProfileError(MosaicError):
    """An invalid or incomplete cost profile."""


class PlanError(MosaicError):
    """A plan that does not run every request exactly once, or uses what does not exist."""


class RegistryError(MosaicError, KeyError):
    """An unknown name in a registry; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError quotes its argument; show the plain message
        return str(self.args[0]) if self.args else ""


class TraceError(MosaicError):
    """An unreadable trace or JSONL data file; the message names the file and the line."""


class TornLineWarning(MosaicError, UserWarning):
    """A JSONL file whose last line is cut short (a crash mid-write): the lines before it are read. Turned into an
    error with ``warnings.simplefilter("error", TornLineWarning)`` (the CLI's ``--strict``)."""
