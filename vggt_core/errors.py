"""Exception types that carry a message meant for the person using the tool.

Everything the user can cause (a bad file, too many frames, no weights) raises one of
these; a front end shows ``str(error)`` and never a traceback.
"""


class InputError(ValueError):
    """Input the user gave cannot be used (unreadable file, wrong shape, too small, ...)."""


class WeightsUnavailableError(RuntimeError):
    """The checkpoint cannot be found, downloaded or loaded."""


class FrameLimitError(InputError):
    """More frames than the configured limit or than the device memory can hold."""


class MeshError(InputError):
    """No mesh can be fused from this scene with these settings; the message says what to change."""
