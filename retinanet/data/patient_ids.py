"""Patient ids become file names (`<id>.dcm`, `<cache>/<key>/<id>.raw`, overlays): the one check that they can.

An id read from a label, class, split or header file is checked where it is read, and again where a
file name is built from it, so that no id can name a file outside the data, cache and output
directories (`../../outside/victim`, `/etc/passwd`, `C:x`) or one the file system refuses.
"""

from __future__ import annotations

from retinanet.errors import UserError

MAX_BYTES = 200  # file systems allow 255 bytes per name; this leaves room for suffixes such as ".tmp.dcm"
SEPARATORS = ("/", "\\")
SHOWN_CHARACTERS = 80  # of an id quoted in a message: a megabyte-long id must not flood the terminal


class PatientIdError(UserError, ValueError):
    """A patient id that cannot be a file name; the message names the file and line it came from."""


def patient_id_problem(value: str) -> str | None:
    """Why `value` cannot be a file name, or None when it can."""
    if not value:
        return "it is empty"
    control = next((character for character in value if ord(character) < 32 or ord(character) == 127), None)
    if control is not None:
        return f"it contains the control character U+{ord(control):04X}"
    if value[0] in SEPARATORS:
        return "it is an absolute path"
    if any(separator in value for separator in SEPARATORS):
        return "it contains a path separator"
    if ":" in value:
        return "it contains a colon (a drive on Windows)"
    if value in (".", ".."):
        return "it names a directory ('.' or '..')"
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate, from text decoded with surrogateescape
        return "it is not valid Unicode text"
    if size > MAX_BYTES:
        return f"it is {size} bytes long in UTF-8 (at most {MAX_BYTES})"
    return None


def shown(value: str) -> str:
    """`value` quoted for a message: control characters escaped, a long one cut short."""
    if len(value) <= SHOWN_CHARACTERS:
        return repr(value)
    return f"{value[:SHOWN_CHARACTERS]!r}... ({len(value)} characters)"


def describe_problem(value: str) -> str | None:
    """The message of a bad id without its place, or None for a good one."""
    problem = patient_id_problem(value)
    return None if problem is None else f"patientId {shown(value)} is not a valid file name: {problem}"


def check_patient_id(value: str, where: str, error: type[UserError] = PatientIdError) -> str:
    """`value` when it can be a file name; otherwise `error` naming `where` (a file and line), so that
    each reader raises the error of its own files (LabelError for the label and split files)."""
    message = describe_problem(value)
    if message is not None:
        raise error(f"{where}: {message}")
    return value
