"""The one exception type the CLI turns into a clean error message (no traceback)."""


class D3SError(Exception):
    """Bad input or a failed check: the message names the file, key or step and what was expected."""
