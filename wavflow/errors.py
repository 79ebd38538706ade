"""The one exception type that means "the user's input is wrong"."""


class WavflowError(Exception):
    """A problem with a file, an argument or a checkpoint that the user can fix.

    The command-line tools print its message on one line and exit with status 2, so the message must name
    the thing that is wrong (a path, a shape, a key) and, where it helps, what was expected instead.
    """
