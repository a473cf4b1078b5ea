"""The one error interop raises."""


class InteropError(ValueError):
    """A checkpoint or config that cannot be converted; the message names it and the fix."""
