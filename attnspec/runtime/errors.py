"""The exceptions generated modules raise; no torch import (`attnspec.errors` re-exports them).

Example:
    >>> issubclass(UnsupportedInputError, UnsupportedBackendError)
    True
"""


class UnsupportedBackendError(ValueError):
    """A backend was requested that cannot run a spec; the message lists every reason."""


class UnsupportedInputError(UnsupportedBackendError):
    """A backend that runs the spec cannot run these particular inputs (a dtype, a device, a
    shape, document ids out of order, a missing kernel library); the message says why and what
    runs them instead. Never a wrong result: the call is refused."""
