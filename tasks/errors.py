"""One exception type for bad user input; the CLI turns it into one line and exit code 2."""


class UserError(ValueError):
    """Bad input. `field` names what the user set, the message says what is allowed."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
