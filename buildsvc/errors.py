"""The root of every error buildsvc raises on purpose.

The tree (each package adds its leaves in its own ``errors`` module and subclasses these)::

    BuildsvcError
    ├── InvalidInput                 bad input from a user or client: exit status 2, gRPC INVALID_ARGUMENT
    │   ├── InvalidDatabaseURL
    │   ├── UnknownEventType
    │   ├── EventSchemaError
    │   └── DefinitionError          (solver) a malformed definition, naming the vertex
    ├── NotFound                     a named thing does not exist: gRPC NOT_FOUND
    ├── Conflict                     a precondition failed: gRPC FAILED_PRECONDITION / ABORTED
    │   ├── StreamVersionConflict
    │   └── EventIdConflict
    ├── StoreUnavailable             the database did not answer within the retry bound: gRPC UNAVAILABLE
    ├── IntegrityViolation           the log was tampered with (hash chain broken)
    └── ExecutionError               a build step failed (solver/executors add leaves)

Errors carry typed attributes so callers (and the gRPC error table) never parse messages.
"""

from __future__ import annotations


class BuildsvcError(Exception):
    """Base class of every error buildsvc raises on purpose."""


class InvalidInput(BuildsvcError):
    """The request, definition, option or file given to buildsvc is malformed."""


class NotFound(BuildsvcError):
    """A named thing (build, stream, projection, worker) does not exist."""


class Conflict(BuildsvcError):
    """A precondition of the request did not hold (for example an optimistic version check)."""


class StoreUnavailable(BuildsvcError):
    """The event store could not be reached within the retry bound."""


class IntegrityViolation(BuildsvcError):
    """The stored log is not what was written: an event was edited, deleted or reordered."""


class ExecutionError(BuildsvcError):
    """A build step failed."""
