"""The one exception type for problems the user can fix: shown as one line, never a traceback.

The CLI prints it and exits with code 2; the API turns it into a 4xx JSON response.
"""


class UserError(Exception):
    """Bad input or an unavailable resource, with a message fit to show as it is."""

    status_code = 400


class NotFoundError(UserError):
    """A named thing (model, variant, job, result) does not exist."""

    status_code = 404


class ConflictError(UserError):
    """The request does not fit the resource's state (e.g. cancelling a finished job)."""

    status_code = 409
