"""The one place where an exception becomes what the user reads.

- `OnnxkdError`: our own one-line message, exit 1.
- A library's error caused by what the user gave (a file that cannot be read or written, a
  file that is not ONNX, a model onnxruntime refuses, an empty `.npy`): one line naming the
  library and its message, exit 1.
- Anything else is a bug in onnxkd. The user still gets one line (never a traceback in the
  middle of their terminal), exit 70 (EX_SOFTWARE), and the traceback is written to a file
  named in that line; `ONNXKD_DEBUG=1` re-raises it instead.

Library exception types are matched by module name, so that this module (loaded for every
`--help`) imports neither onnx nor onnxruntime.
"""

from __future__ import annotations

import errno
import os
import tempfile
import traceback

from onnxkd.errors import OnnxkdError

EXIT_USER_ERROR = 1
EXIT_INTERNAL_ERROR = 70
DEBUG_ENV = "ONNXKD_DEBUG"

# Modules whose exceptions describe a bad model or file the user gave, not a bug of ours.
MODEL_LIBRARIES = {
    "onnxruntime": "onnxruntime",
    "onnx": "onnx",
    "google.protobuf": "the ONNX file could not be parsed (protobuf)",
}


def user_message(error: BaseException) -> str | None:
    """One line for an error the user caused; None for a bug."""
    if isinstance(error, OnnxkdError):
        return str(error)
    if isinstance(error, OSError):
        return _os_message(error)
    if isinstance(error, EOFError):
        return f"a file ended early (it is empty or truncated): {error}"
    if isinstance(error, UnicodeDecodeError):
        return f"a text file holds binary data ({error.reason} at byte {error.start})"
    if isinstance(error, MemoryError):
        return "out of memory; try a smaller --batch-size or fewer --threads"
    module = type(error).__module__ or ""
    for prefix, library in MODEL_LIBRARIES.items():
        if module == prefix or module.startswith(prefix + "."):
            return f"{library}: {_first_line(error)}"
    return None


def _os_message(error: OSError) -> str:
    reason = error.strerror or _first_line(error)
    where = f": {error.filename}" if error.filename else ""
    hint = {
        errno.EACCES: "; choose a folder you can write (-o, --workdir)",
        errno.EROFS: "; the file system is read-only: choose another folder (-o, --workdir)",
        errno.ENOSPC: "; free some disk space or choose another folder",
        errno.ENOTDIR: "; a part of the path is a file, not a folder",
    }.get(error.errno, "")
    return f"{reason}{where}{hint}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if len(lines) == 1 else f"{lines[0]} ({len(lines) - 1} more lines)"


def internal_error_message(error: BaseException) -> str:
    """One line for a bug, with the traceback saved to a file named in it."""
    path = _save_traceback(error)
    saved = f"; the traceback is in {path}" if path else ""
    return (
        f"internal error (a bug in onnxkd, please report it): {type(error).__name__}: "
        f"{_first_line(error)}{saved} (set {DEBUG_ENV}=1 to see it here)"
    )


def _save_traceback(error: BaseException) -> str | None:
    try:
        fd, path = tempfile.mkstemp(prefix="onnxkd-traceback-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write("".join(traceback.format_exception(error)))
        return path
    except OSError:
        return None


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")
