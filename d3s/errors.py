"""The exceptions the CLI translates (d3s.cli.StageGroup): a clean error message, or exit 75 after a stop signal.

Torch-free, so the command line can catch them without importing a stage.
"""

# The exit status of a job that saved a checkpoint on a stop signal: EX_TEMPFAIL, "try again".
EXIT_PREEMPTED = 75


class D3SError(Exception):
    """Bad input or a failed check: the message names the file, key or step and what was expected."""


class Preempted(Exception):
    """Raised after a checkpoint was saved because a stop signal arrived (the job exits EXIT_PREEMPTED)."""
