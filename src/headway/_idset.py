"""An exact set of string ids whose memory stays bounded, however many ids it holds.

The batch runner remembers every custom_id it has seen (repeats in the input) and every
custom_id already in the output (a resume). In a Python set each id costs some 80-100
bytes; at hundreds of millions of lines that is many gigabytes. :class:`IdSet` is a plain
``set`` up to ``threshold`` ids (small runs keep the speed and behaviour of a set); past
it, it moves its ids to a private SQLite table on disk and keeps only a small buffer of
pending changes in memory.

On disk an id is stored as its 16-byte BLAKE2b digest (128 bits): two different ids
share a digest with a chance of about n²/2¹²⁹ — for a billion ids, one in 10²¹ — so in
practice the set stays exact. The table (``WITHOUT ROWID``, keyed by the digest) lives in
a temporary file in ``dir`` (default: :func:`tempfile.gettempdir`), which is unlinked
as soon as it is opened (on POSIX: nothing is left behind even by a killed process) and
in any case removed by :meth:`IdSet.close`. Changes are buffered and written in one
transaction per :data:`BUFFER` of them; a lookup checks a 16 MiB Bloom filter of the
ids added (most absent ids stop there), then the buffer, then the table. So a set on disk
holds at most some 35 MiB of memory (the filter, SQLite's page cache, the buffer).

>>> ids = IdSet(threshold=2)
>>> for i in "abc":
...     ids.add(i)
>>> ids.spilled, len(ids), "b" in ids, "z" in ids
(True, 3, True, False)
>>> ids.discard("b")
>>> len(ids), "b" in ids
(2, False)
>>> ids.close()
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from collections.abc import Iterable
from hashlib import blake2b
from typing import Self

__all__ = ["BUFFER", "SPILL_AT", "Digests", "IdSet"]

#: Ids held in memory as a plain set before the set moves to disk.
SPILL_AT = 1_000_000
#: Pending changes (adds and discards) kept in memory before they are written at once.
BUFFER = 16_384
#: SQLite's page cache for the table (KiB).
_CACHE_KIB = 16_384
#: The filter of ids surely absent: 2**27 bits (16 MiB), two per id.
_FILTER_BITS = 27
_FILTER_MASK = (1 << _FILTER_BITS) - 1


def _digest(id: str) -> bytes:
    return blake2b(id.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class IdSet:
    """A set of strings: ``add``, ``discard``, ``in`` and ``len``; spills to disk when large.

    Args:
        ids: ids to start with.
        threshold: the most ids kept in memory as a plain set (default:
            :data:`SPILL_AT`); one more moves the set to a SQLite table on disk (see the
            module's docs), for good.
        dir: where the table's temporary file goes (default: :func:`tempfile.gettempdir`).

    It cannot list its ids (on disk only their digests are kept). :meth:`close` (or
    leaving a ``with`` block) drops the table and its file and leaves the set empty.
    """

    __slots__ = (
        "_adds",
        "_bits",
        "_count",
        "_db",
        "_dels",
        "_path",
        "_set",
        "dir",
        "threshold",
    )

    def __init__(
        self, ids: Iterable[str] = (), *, threshold: int | None = None, dir: str | None = None
    ) -> None:
        if threshold is None:
            threshold = SPILL_AT
        if threshold < 0:
            raise ValueError("threshold must be at least 0")
        self.threshold = threshold
        self.dir = dir
        self._set: set[str] | None = set()
        self._db: sqlite3.Connection | None = None
        self._path: str | None = None
        self._adds: set[bytes] = set()  # digests to insert (disjoint from _dels)
        self._dels: set[bytes] = set()  # digests to delete
        self._count = 0  # ids in the table
        # On disk: two bits per id ever added (a Bloom filter, never cleared), so that
        # most lookups of an absent id need no query.
        self._bits = bytearray()
        for id in ids:
            self.add(id)

    @property
    def spilled(self) -> bool:
        """True once the ids live on disk."""
        return self._set is None

    def add(self, id: str) -> None:
        """Add ``id``."""
        ids = self._set
        if ids is not None:
            ids.add(id)
            if len(ids) > self.threshold:
                self._spill(ids)
            return
        digest = _digest(id)
        self._mark(digest)
        self._dels.discard(digest)
        self._adds.add(digest)
        if len(self._adds) + len(self._dels) >= BUFFER:
            self._flush()

    def _mark(self, digest: bytes) -> None:
        bits = self._bits
        i = int.from_bytes(digest[:4], "little") & _FILTER_MASK
        bits[i >> 3] |= 1 << (i & 7)
        i = int.from_bytes(digest[4:8], "little") & _FILTER_MASK
        bits[i >> 3] |= 1 << (i & 7)

    def discard(self, id: str) -> None:
        """Remove ``id`` if present."""
        ids = self._set
        if ids is not None:
            ids.discard(id)
            return
        digest = _digest(id)
        self._adds.discard(digest)
        self._dels.add(digest)
        if len(self._adds) + len(self._dels) >= BUFFER:
            self._flush()

    def __contains__(self, id: object) -> bool:
        ids = self._set
        if ids is not None:
            return id in ids
        if not isinstance(id, str):
            return False
        digest = _digest(id)
        bits = self._bits
        i = int.from_bytes(digest[:4], "little") & _FILTER_MASK
        if not bits[i >> 3] & (1 << (i & 7)):
            return False  # never added
        i = int.from_bytes(digest[4:8], "little") & _FILTER_MASK
        if not bits[i >> 3] & (1 << (i & 7)):
            return False
        if digest in self._adds:
            return True
        if digest in self._dels or self._db is None:
            return False
        row = self._db.execute("SELECT 1 FROM ids WHERE d = ?", (digest,)).fetchone()
        return row is not None

    def __len__(self) -> int:
        ids = self._set
        if ids is not None:
            return len(ids)
        self._flush()
        return self._count

    def __bool__(self) -> bool:
        return len(self) > 0

    def __repr__(self) -> str:
        where = "on disk" if self._set is None else "in memory"
        return f"<IdSet of {len(self)} ids {where}>"

    def _spill(self, ids: set[str]) -> None:
        fd, path = tempfile.mkstemp(prefix="headway-ids-", suffix=".sqlite", dir=self.dir)
        os.close(fd)
        self._path = path  # until unlinked below: close() removes it
        db = self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # A private scratch table: no journal (it is never rolled back), no fsync.
        for pragma in ("journal_mode = OFF", "synchronous = OFF", "locking_mode = EXCLUSIVE"):
            db.execute(f"PRAGMA {pragma}").fetchall()
        db.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
        db.execute("CREATE TABLE ids (d BLOB PRIMARY KEY) WITHOUT ROWID")
        try:  # gone from the directory now; the open connection keeps it (POSIX)
            os.unlink(path)
            self._path = None
        except OSError:  # pragma: no cover - Windows: removed by close()
            pass
        self._bits = bytearray(1 << (_FILTER_BITS - 3))
        self._set = None
        adds = self._adds
        for id in ids:  # a buffer at a time: no second copy of them all in memory
            digest = _digest(id)
            self._mark(digest)
            adds.add(digest)
            if len(adds) >= BUFFER:
                self._flush()
                adds = self._adds
        self._flush()

    def _flush(self) -> None:
        db = self._db
        adds, dels = self._adds, self._dels
        if db is None or not (adds or dels):
            return
        db.execute("BEGIN")
        try:
            if dels:
                cur = db.executemany("DELETE FROM ids WHERE d = ?", ((d,) for d in dels))
                self._count -= cur.rowcount
            if adds:
                rows = ((d,) for d in sorted(adds))
                cur = db.executemany("INSERT OR IGNORE INTO ids VALUES (?)", rows)
                self._count += cur.rowcount
        finally:
            db.execute("COMMIT")
        self._adds, self._dels = set(), set()

    def close(self) -> None:
        """Drop the table and its file; the set is empty (and in memory) again. Idempotent."""
        db, path = self._db, self._path
        self._db = self._path = None
        self._set = set()
        self._adds, self._dels = set(), set()
        self._bits = bytearray()
        self._count = 0
        try:
            if db is not None:
                db.close()
        finally:
            if path is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Digests:
    """What each earlier result answered (its ``request_digest``), in bounded memory.

    One entry per result, ``"custom_id\\0digest"``, in an :class:`IdSet` (on disk past a
    million), so that resuming a run of a hundred million lines does not hold a dict of
    them; the custom_ids of results written without a digest (by older versions) in
    another, normally empty. Whether a custom_id has a result at all is the ledger's
    business: ask :meth:`answers` about those only. ``dir``: where a spilled set's file
    goes (default: the temporary folder).

    >>> d = Digests()
    >>> d.add("a", "1f2e")
    >>> d.add("b", None)
    >>> d.answers("a", "1f2e"), d.answers("a", "9999"), d.answers("b", "9999")
    (True, False, True)
    >>> bool(d), bool(Digests())
    (True, False)
    """

    __slots__ = ("_pairs", "_undigested")

    def __init__(self, dir: str | None = None) -> None:
        self._pairs = IdSet(dir=dir)
        self._undigested = IdSet(dir=dir)

    def add(self, custom_id: str, digest: str | None) -> None:
        """Record that a result of ``custom_id`` answered the request of ``digest``
        (``None``: the result does not say)."""
        if digest is None:
            self._undigested.add(custom_id)
        else:
            self._pairs.add(custom_id + "\0" + digest)

    def answers(self, custom_id: str, digest: str | None) -> bool:
        """Whether the results on record of ``custom_id`` may answer ``digest``: one of
        them answered it, or one does not say what it answered."""
        if digest is not None and custom_id + "\0" + digest in self._pairs:
            return True
        return custom_id in self._undigested

    def __bool__(self) -> bool:
        """Whether there is anything to check: a result with a digest."""
        return bool(self._pairs)

    def close(self) -> None:
        """Forget them all and drop a spilled set's file (idempotent)."""
        self._pairs.close()
        self._undigested.close()
