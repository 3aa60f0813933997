"""The one exception type for problems with the user's input or environment."""


class RecvaeError(Exception):
    """A problem the user can fix (bad file, bad value, missing device...).

    The message is one line that names the file, line or field and what was expected.
    The CLI prints it without a traceback and exits with status 2.
    """
