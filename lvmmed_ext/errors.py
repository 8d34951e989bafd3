"""The one exception the command-line tools turn into a single readable line and a non-zero exit."""


class UsageError(Exception):
    """A problem with the user's input (paths, data, weights, options), reported as one line without a traceback.

    Example:
        >>> raise UsageError("--data /nope does not exist")
        Traceback (most recent call last):
        ...
        lvmmed_ext.errors.UsageError: --data /nope does not exist
    """
