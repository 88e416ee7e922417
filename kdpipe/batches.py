"""Old import path of :class:`kdpipe.rows.Batch`, kept for ``kdpipe.specialists`` until its
imports move. Nothing else imports this module."""

from __future__ import annotations

from kdpipe.rows import Batch, RowSource

__all__ = ["Batch", "RowSource"]
