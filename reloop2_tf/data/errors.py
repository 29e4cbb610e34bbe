"""The one exception type of the data layer."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data or arguments; the message is one line and names the problem."""
