"""Re-read every chunk of a cache and check it against its completion record."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from kdpipe.cache.manifest import ChunkRecord, Manifest, chunk_bounds
from kdpipe.cache.storage import ChunkStore, read_checked
from kdpipe.errors import CacheChunkMissingError, CacheCorruptError

__all__ = ["ChunkProblem", "VerifyReport", "verify_chunks"]


@dataclass(frozen=True)
class ChunkProblem:
    """What is wrong with one chunk (``index`` -1: the cache as a whole)."""

    index: int
    kind: str  # "incomplete" | "missing" | "corrupt" | "unfinished"
    message: str


@dataclass(frozen=True)
class VerifyReport:
    """Result of :meth:`kdpipe.LogitCache.verify`."""

    path: str
    ok: bool
    n_chunks: int
    n_complete: int
    n_verified: int
    problems: tuple[ChunkProblem, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        head = (
            f"{self.path}: {'OK' if self.ok else 'FAILED'} - {self.n_verified}/{self.n_chunks} chunks verified, "
            f"{self.n_complete} complete, {len(self.problems)} problems"
        )
        return "\n".join([head] + [f"  chunk {p.index}: {p.kind}: {p.message}" for p in self.problems])


def verify_chunks(
    path: str, manifest: Manifest, records: dict[int, ChunkRecord], store: ChunkStore
) -> VerifyReport:
    """Read every recorded chunk (logits and labels), compare checksums, list problems."""
    problems: list[ChunkProblem] = []
    verified = 0
    for i in range(manifest.n_chunks):
        record = records.get(i)
        if record is None:
            start, stop = chunk_bounds(i, manifest.chunk_rows, manifest.n_rows)
            problems.append(ChunkProblem(i, "incomplete", f"rows {start}-{stop - 1} were never written"))
            continue
        try:
            read_checked(store, record, "logits")
            read_checked(store, record, "labels")
        except CacheChunkMissingError as exc:
            problems.append(ChunkProblem(i, "missing", str(exc)))
        except CacheCorruptError as exc:
            problems.append(ChunkProblem(i, "corrupt", str(exc)))
        else:
            verified += 1
    if not manifest.complete and len(records) == manifest.n_chunks:
        problems.append(ChunkProblem(-1, "unfinished", "every chunk is written but the build was not finalized"))
    return VerifyReport(
        path=path,
        ok=not problems,
        n_chunks=manifest.n_chunks,
        n_complete=len(records),
        n_verified=verified,
        problems=tuple(problems),
    )
