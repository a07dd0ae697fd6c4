"""The error a request is answered with."""


class RequestError(Exception):
    """A request the server refuses or cannot serve: ``status`` (4xx, 500 or 503) and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message
