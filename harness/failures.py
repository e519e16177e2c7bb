"""Which failures are worth retrying: transient ones are reported and never cached.

A paradigm or backend signals a failure in one of three ways:

- returns :meth:`Answer.failed` (deterministic: cached with its reason, counted as wrong on every
  rerun until the input changes) or :meth:`Answer.retryable` (transient: counted as wrong in this
  run, not cached, computed again by the next run);
- raises :class:`TransientError` (e.g. a served model's 5xx after its own retries, a timeout):
  the shared chunker (``harness.chunking``) answers the batch one sample at a time and turns
  what still fails into a transient failed answer;
- raises anything else: :func:`is_transient` classifies it (out-of-memory incl.
  ``torch.cuda.OutOfMemoryError``, I/O errors with an errno other than "not found", timeouts,
  connection errors are transient; everything else is deterministic).
"""

from __future__ import annotations

import errno

#: errnos of I/O errors that say the input itself is absent (deterministic: the key changes when
#: the file appears), as opposed to a device, network or permission problem that may go away.
_ABSENT = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR}


class TransientError(RuntimeError):
    """Raise from a paradigm or backend for a failure that a later attempt may not repeat."""


def is_transient(exc: BaseException) -> bool:
    """True for failures a rerun may not repeat; looks through ``raise ... from`` chains."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if _transient_one(cur):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _transient_one(exc: BaseException) -> bool:
    if isinstance(exc, (TransientError, MemoryError, TimeoutError, ConnectionError)):
        return True
    if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError, torch.OutOfMemoryError
        return True
    if isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower():  # CUDA/MPS OOM on older torch
        return True
    # An OSError with an errno is the operating system's (EIO, EACCES, ENOSPC, ...); decoders such as
    # PIL raise OSError without one for a corrupt file, which is deterministic.
    return isinstance(exc, OSError) and exc.errno is not None and exc.errno not in _ABSENT


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
