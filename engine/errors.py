"""The errors a job reports to its user, all under one base class so every job handles them in
one place (engine.cli.Job)."""


class EngineError(Exception):
    """An error a job reports in one line, without a traceback: the message says what to fix."""


class ConfigError(EngineError):
    """A config file or override that cannot be used; the message names the file and key."""


class InputError(EngineError):
    """The instruction input cannot be read at all (as opposed to a bad row, which is diverted)."""


class PreflightError(EngineError):
    """A path or setting checked before Ray starts or any model loads is unusable."""


class CheckpointError(EngineError):
    """A checkpoint that cannot be restored safely; the message names the file."""
