"""Several server processes as one server: the Redis backplane (backplane.py; needs the
`cluster` extra) and the room order it keeps (order.py). Nothing here is imported by a
single-process server but `ClusterUnavailable`."""

from __future__ import annotations

__all__ = ["ClusterUnavailable"]


class ClusterUnavailable(Exception):
    """The cluster's Redis could not be reached, or this node fenced itself: retryable."""
