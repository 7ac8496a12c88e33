"""One error type for everything a user can get wrong.

A `UserError` is raised before any training starts and is printed by the command-line entry point
as one line: what is wrong, and how to fix it. Nothing else (no traceback) is shown for it.
"""


class UserError(Exception):
    """Bad input: a config value, a missing dataset, an unwritable directory. One line, with a fix."""

    def __init__(self, what: str, fix: str):
        super().__init__(f"{what}; {fix}")
        self.what = what
        self.fix = fix
