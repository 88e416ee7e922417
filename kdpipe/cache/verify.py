"""Re-read every chunk of a cache and check it against its completion record.

An unfinished cache and a damaged one are different findings: chunks that were never
written make a cache *incomplete* (rerun the build to finish it); chunks whose recorded
data is missing or does not match its checksum make it *corrupt*.
"""

from __future__ import annotations

from dataclasses import dataclass

from kdpipe.cache.manifest import ChunkRecord, Manifest
from kdpipe.cache.storage import ChunkStore, chunk_parts, read_checked
from kdpipe.errors import CacheChunkMissingError, CacheCorruptError

__all__ = ["ChunkProblem", "VerifyReport", "verify_chunks"]


@dataclass(frozen=True)
class ChunkProblem:
    """What is wrong with one recorded chunk."""

    index: int
    kind: str  # "missing" (recorded, but its data is gone) | "corrupt"
    message: str


@dataclass(frozen=True)
class VerifyReport:
    """Result of :meth:`kdpipe.LogitCache.verify`.

    Attributes
    ----------
    status : {"OK", "INCOMPLETE", "FAILED"}
        ``"FAILED"`` when any recorded chunk is corrupt or missing; else ``"INCOMPLETE"``
        when the build has not finished; else ``"OK"``.
    ok : bool
        True only for a finished cache whose every chunk verified.
    incomplete : tuple of int
        Chunks never written (the build has not reached them yet).
    corrupt : tuple of int
        Recorded chunks whose data is missing or fails its checksum (see ``problems``).
    finished : bool
        Whether the build marked the cache finished.
    """

    path: str
    ok: bool
    n_chunks: int
    n_complete: int
    n_verified: int
    problems: tuple[ChunkProblem, ...] = ()
    incomplete: tuple[int, ...] = ()
    corrupt: tuple[int, ...] = ()
    finished: bool = True

    @property
    def status(self) -> str:
        if self.corrupt:
            return "FAILED"
        return "OK" if self.ok else "INCOMPLETE"

    def __str__(self) -> str:
        head = (
            f"{self.path}: {self.status} - {self.n_verified}/{self.n_chunks} chunks verified, "
            f"{self.n_complete} complete, {len(self.corrupt)} failed"
        )
        kinds = sorted({p.kind for p in self.problems})
        if kinds:  # what the failed ones are: missing data, corrupt data, or both
            head += f" ({' or '.join(kinds)})"
        lines = [head]
        if self.incomplete:
            shown = ", ".join(map(str, self.incomplete[:10])) + (
                ", ..." if len(self.incomplete) > 10 else ""
            )
            lines.append(
                f"  not written yet: {len(self.incomplete)} chunks ({shown}); rerun the build to finish it"
            )
        elif not self.finished:
            lines.append(
                "  every chunk is written but the build was not finalized; rerun the build to finish it"
            )
        lines += [f"  chunk {p.index}: {p.kind}: {p.message}" for p in self.problems]
        return "\n".join(lines)


def verify_chunks(
    path: str, manifest: Manifest, records: dict[int, ChunkRecord], store: ChunkStore
) -> VerifyReport:
    """Read every recorded chunk (logits, labels, row and view digests), compare checksums, list problems."""
    problems: list[ChunkProblem] = []
    incomplete: list[int] = []
    verified = 0
    for i in range(manifest.n_chunks):
        record = records.get(i)
        if record is None:
            incomplete.append(i)
            continue
        try:
            for what in chunk_parts(manifest):
                read_checked(store, record, what)
        except CacheChunkMissingError as exc:
            problems.append(ChunkProblem(i, "missing", str(exc)))
        except CacheCorruptError as exc:
            problems.append(ChunkProblem(i, "corrupt", str(exc)))
        else:
            verified += 1
    return VerifyReport(
        path=path,
        ok=not problems and manifest.complete and not incomplete,
        n_chunks=manifest.n_chunks,
        n_complete=len(records),
        n_verified=verified,
        problems=tuple(problems),
        incomplete=tuple(incomplete),
        corrupt=tuple(p.index for p in problems),
        finished=manifest.complete,
    )
