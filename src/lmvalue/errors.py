"""One exception type for every user-facing problem.

The CLI catches :class:`LmvalueError`, prints its message (what went wrong, where, and how
to fix it) and exits non-zero without a traceback. Anything else is a bug and keeps its
traceback.
"""


class LmvalueError(Exception):
    """A problem with the user's input or environment, explained in the message."""


class DataError(LmvalueError):
    """Bad or missing data: unreadable file, missing column, empty corpus, ..."""


class ConfigError(LmvalueError):
    """Invalid configuration. The message lists every problem found, not just the first."""


class CheckpointError(LmvalueError):
    """A folder that is not a usable checkpoint, or an output folder that must not be overwritten."""


class TrainingError(LmvalueError):
    """Training cannot go on (e.g. the loss became NaN); the last good checkpoint is kept."""
