"""Errors the user can act on.

Every error raised for bad input is a :class:`SmiteError` whose message is one line naming the
file or input at fault. The CLI prints it as ``error: <message>`` and exits non-zero without a
traceback; the ComfyUI nodes let it surface as a readable node error.
"""


def reason(err: BaseException, limit: int | None = None) -> str:
    """What ``err`` says, on one line (at most ``limit`` characters), or its type's name when it says
    nothing: the part in parentheses of a one-line error about a file the program could not use."""
    return " ".join(str(err).split())[:limit] or type(err).__name__


class SmiteError(Exception):
    """Base class: a problem the user can fix. ``str(err)`` is one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class InputError(SmiteError):
    """A file, folder or value given by the user is missing, unreadable or inconsistent."""


class EmbeddingError(SmiteError):
    """A segment-embedding file is damaged, of an unknown format, or made for another backbone."""


class BackboneError(SmiteError):
    """A backbone checkpoint cannot be found, read or recognised."""


class OutputExistsError(SmiteError):
    """The output path exists and overwriting was not asked for."""
