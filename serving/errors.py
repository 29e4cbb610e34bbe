"""The request error of the development server, shared by its gRPC and REST front ends.

It lives apart from both so that ``dev_server`` (which starts the REST API) and ``rest`` (which
reports its errors) never import each other.
"""

from __future__ import annotations

import grpc

# TF Serving's http_server.cc (ToHTTPStatusCode): the HTTP status of each canonical error code.
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


class ServingError(Exception):
    """A request error with its gRPC status code."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        """The HTTP status TF Serving's REST API answers this error with."""
        return HTTP_STATUS.get(self.code, 500)


def invalid(message: str) -> ServingError:
    """An INVALID_ARGUMENT error (HTTP 400)."""
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)
