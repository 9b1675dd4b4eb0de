"""Errors the runner reports as one line on stderr, with an exit code."""


class RunnerError(Exception):
    """Bad input or a failed run; `str(error)` is the one-line message.

    Args:
        message: one line saying what is wrong and what to do.
        exit_code: 2 for bad command-line input, 1 otherwise.
    """

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class CheckpointError(RunnerError):
    """A checkpoint that cannot be resumed from (corrupt, or made by a different run)."""


class Interrupted(RunnerError):
    """SIGTERM/SIGINT received; the running loop saved a checkpoint before stopping."""

    def __init__(self, message: str, signum: int):
        super().__init__(message, 128 + signum)
        self.signum = signum
