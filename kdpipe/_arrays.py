"""Old import path of :func:`kdpipe.rows.take_rows`, kept for ``kdpipe.specialists`` until
its imports move. Nothing else imports this module."""

from __future__ import annotations

from kdpipe.rows import n_rows, take_rows

__all__ = ["take_rows", "n_rows"]
