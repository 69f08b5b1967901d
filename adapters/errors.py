"""One error type for everything a user can get wrong with a file or a setting."""


class ModelFileError(ValueError):
    """A model file that cannot be used where it was given; the message says what to do."""

    def __init__(self, path, problem, fix=""):
        self.path = str(path) if path is not None else None
        self.problem = problem
        self.fix = fix
        where = f"{self.path}: " if self.path else ""
        super().__init__(f"{where}{problem}" + (f" {fix}" if fix else ""))
