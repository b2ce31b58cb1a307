"""The project's one exception family."""


class IKMDNError(ValueError):
    """Bad input or usage: a message that names what was expected and what was given.

    The CLI prints the message on one line and exits with status 2.
    """

    exit_code = 2


class JobFailedError(IKMDNError):
    """Input was fine but the job failed (e.g. training diverged). The CLI exits with status 1."""

    exit_code = 1
