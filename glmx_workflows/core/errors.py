"""The one exception type the package raises for bad input.

It lives in ``core`` so that every layer (numbers, I/O, spec, interfaces) can raise it; the CLI turns
it into a single line on stderr.
"""


class GlmxError(Exception):
    """Bad input or an unrecoverable condition, described for a user.

    Parameters
    ----------
    message : str
        What is wrong and what was expected.
    file : str or path-like, optional
        The file at fault.
    field : str, optional
        The key, column, subject or regressor at fault within that file.
    """

    def __init__(self, message, file=None, field=None):
        self.message = str(message)
        self.file = None if file is None else str(file)
        self.field = field
        super().__init__(self.one_line())

    def one_line(self):
        """Return the message as a single line: ``file: field: message``.

        Returns
        -------
        str
            The parts that are set, joined by ``": "``, newlines replaced by spaces.
        """
        parts = []
        if self.file:
            parts.append(self.file)
        if self.field:
            parts.append(str(self.field))
        parts.append(self.message)
        return ": ".join(parts).replace("\n", " ")
