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


# --- how the running command spells a setting ---------------------------------------------------
#
# Library code names settings by their dotted config name (``data.encoding``). Commands spell them
# differently (``lmvalue pretrain --data.encoding``, ``lmvalue predict --encoding``), so a hint in an
# error message asks :func:`option` for the running command's own spelling. The CLI fills the table
# from the command's parser before it runs (:func:`set_option_spellings`); Python callers see the
# dotted name, which is also the keyword of the config dataclasses.

_SPELLINGS: dict[str, str] | None = None


def set_option_spellings(spellings: dict[str, str] | None) -> None:
    """Dotted setting -> the flag of the running command (None: not running as a command)."""
    global _SPELLINGS
    _SPELLINGS = dict(spellings) if spellings is not None else None


def option(dotted: str, value: str | None = None) -> str | None:
    """The running command's spelling of ``dotted`` (with ``value``), or None if it has no such flag.

    ``option("data.encoding", "gb18030")`` is ``--encoding gb18030`` in ``lmvalue predict``,
    ``--data.encoding gb18030`` in ``lmvalue pretrain`` and ``encoding='gb18030'`` from Python.
    """
    if _SPELLINGS is None:  # Python callers: the keyword of the function or config field
        name = dotted.rpartition(".")[2]
        return f"{name}={value!r}" if value is not None else f"{name}="
    flag = _SPELLINGS.get(dotted)
    if flag is None:
        return None
    return f"{flag} {value}" if value is not None else flag


def with_option(dotted: str, value: str | None = None, *, fallback: str = "") -> str:
    """`` (--flag value)`` for a message, or ``fallback`` when the command has no such flag."""
    spelled = option(dotted, value)
    return f" ({spelled})" if spelled else fallback


def setting(dotted: str) -> str:
    """How a message names a setting: the running command's flag (``--vocab-size``), else its dotted
    name (``tokenizer.vocab_size``, a ``section.field=VALUE`` override or a YAML key)."""
    return (_SPELLINGS or {}).get(dotted) or dotted
