"""The paper's experiments, run through kdpipe's public path, with a report and plots.

``kdpipe reproduce`` (or :func:`run`) trains the teachers, runs each once over the
transfer set into a logit cache with :func:`kdpipe.build_cache`, fits every student
(:class:`kdpipe.DistilledClassifier`) from that cache, and writes ``REPORT.md``,
``results.json`` and PNG plots. Modules: ``settings`` (profiles), ``data`` (splits),
``lab`` (teachers, caches, clocks), ``experiments``, ``stats`` (verdict rule),
``report``, ``plots``, ``runner``, ``cli``.
"""

from __future__ import annotations

from kdpipe.reproduce.runner import run

__all__ = ["run"]
