"""A retry budget: retries allowed as a share of recent requests, shared by callers."""

from __future__ import annotations

from headway._clock import Clock, now_function, resolve_clock
from headway.errors import ConfigurationError

__all__ = ["RetryBudget"]


class RetryBudget:
    """Retries allowed across many calls: a ratio of recent calls plus a floor per second.

    Every call deposits one request (:meth:`record_request`); every retry withdraws one
    (:meth:`try_withdraw`). Over the last ``window`` seconds, at most
    ``ratio * calls + min_retries_per_second * window`` retries are allowed. With the
    defaults (20 % and 10/s over 10 s), a service where every call fails sees at most
    1.2x the load plus a trickle, instead of 4x with three retries per call.

    The window is kept in ``buckets`` slices. To stay cheap on the success path, a
    deposit does not read the clock: deposits are booked in batches, in the slice of
    the last clock reading (every retry reads the clock, and so does every 32nd
    deposit). A deposit is therefore never counted as more recent than it is: the
    budget errs on the side of fewer retries.

    One budget is shared by every call of a :class:`RetryPolicy` (and of a
    :class:`~headway.Policy`); share one object between policies to share the budget.
    A :class:`~headway.Policy` counts its calls itself and hands them over with
    :meth:`record_requests` every 16 calls and before each retry it asks for: the
    budget may see up to 15 calls of each other policy sharing it late (booked when
    handed over).

    >>> from headway import ManualClock
    >>> budget = RetryBudget(ratio=0.5, min_retries_per_second=0.0, window=10.0,
    ...                      clock=ManualClock())
    >>> for _ in range(4):
    ...     budget.record_request()
    >>> [budget.try_withdraw() for _ in range(3)]
    [True, True, False]
    """

    __slots__ = (
        "__dict__",  # instances stay mockable: patch.object(obj, "method", ...)
        "_batch",
        "_clock",
        "_epoch",
        "_floor",
        "_n",
        "_now",
        "_pending",
        "_req",
        "_ret",
        "_total_req",
        "_total_ret",
        "_width",
        "min_retries_per_second",
        "ratio",
        "window",
    )

    #: Deposits booked without reading the clock, at most.
    BATCH = 32

    def __init__(
        self,
        ratio: float = 0.2,
        min_retries_per_second: float = 10.0,
        window: float = 10.0,
        *,
        clock: Clock | None = None,
        buckets: int = 10,
    ) -> None:
        if ratio < 0 or min_retries_per_second < 0:
            raise ConfigurationError(
                "RetryBudget ratio and min_retries_per_second must be >= 0 "
                f"(got ratio={ratio!r}, min_retries_per_second={min_retries_per_second!r})"
            )
        if window <= 0 or buckets < 1:
            raise ConfigurationError(
                f"RetryBudget window must be > 0 and buckets >= 1 (got {window!r}, {buckets!r})"
            )
        self.ratio = float(ratio)
        self.min_retries_per_second = float(min_retries_per_second)
        self.window = float(window)
        self._floor = self.min_retries_per_second * self.window
        self._clock = resolve_clock(clock)
        self._now = now_function(self._clock)
        self._n = int(buckets)
        self._width = self.window / self._n
        self._req = [0] * self._n
        self._ret = [0] * self._n
        self._total_req = 0
        self._total_ret = 0
        self._pending = 0
        self._batch = self.BATCH  # a slot: read faster than the class attribute
        self._epoch: int | None = None

    def _slot(self) -> int:
        """Index of the current bucket: book pending deposits, expire old buckets."""
        return self._advance(int(self._now() // self._width))

    def _advance(self, epoch: int) -> int:
        # _slot() with the clock already read (``epoch`` is the slice it fell in).
        pending = self._pending
        last = self._epoch
        if pending:
            if last is not None:
                # Booked where the clock was last read: never later than they happened.
                self._req[last % self._n] += pending
                self._total_req += pending
            self._pending = 0
        if epoch != last:
            n = self._n
            if last is None or epoch - last >= n or epoch < last:
                self._req[:] = self._ret[:] = [0] * n
                self._total_req = self._total_ret = 0
            else:
                req, ret = self._req, self._ret
                for e in range(last + 1, epoch + 1):
                    i = e % n
                    self._total_req -= req[i]
                    self._total_ret -= ret[i]
                    req[i] = ret[i] = 0
            self._epoch = epoch
        return epoch % self._n

    def record_request(self) -> None:
        """Count one call (its first attempt) towards the budget (cheap: no clock read
        except for the first deposit and every :attr:`BATCH`-th)."""
        if self._epoch is None:
            self._slot()  # the first deposit reads the clock
        pending = self._pending + 1
        self._pending = pending
        if pending >= self._batch:
            self._slot()

    def record_requests(self, n: int) -> None:
        """Count ``n`` calls at once, as ``n`` :meth:`record_request` calls would.

        For a caller that counts its own calls and hands them over in batches (as
        :class:`~headway.Policy` does): they are booked like any pending deposits, in
        the slice of the last clock reading.

        >>> from headway import ManualClock
        >>> budget = RetryBudget(ratio=0.5, min_retries_per_second=0.0, clock=ManualClock())
        >>> budget.record_requests(4)
        >>> budget.requests, budget.available
        (4, 2.0)
        """
        if not n > 0:
            if n == 0:
                return
            raise ValueError(f"record_requests() needs n >= 0, got {n!r}")
        if self._epoch is None:
            self._slot()  # the first deposit reads the clock
        pending = self._pending + n
        self._pending = pending
        if pending >= self._batch:
            self._slot()

    def try_withdraw(self) -> bool:
        """Withdraw one retry if the budget allows it; return whether it did."""
        epoch = int(self._now() // self._width)
        last = self._epoch
        pending = self._pending
        if epoch == last and last is not None:
            # _advance() without expiry (same slice as the last reading): book deposits.
            i = epoch % self._n
            if pending:
                self._req[i] += pending
                self._total_req += pending
                self._pending = 0
        else:
            i = self._advance(epoch)
        if self.ratio * self._total_req + self._floor - self._total_ret < 1.0:
            return False
        self._ret[i] += 1
        self._total_ret += 1
        return True

    @property
    def available(self) -> float:
        """Retries the budget would allow right now."""
        self._slot()
        return max(0.0, self.ratio * self._total_req + self._floor - self._total_ret)

    @property
    def requests(self) -> int:
        """Calls counted in the current window."""
        self._slot()
        return self._total_req

    @property
    def retries(self) -> int:
        """Retries spent in the current window."""
        self._slot()
        return self._total_ret

    def __repr__(self) -> str:
        return (
            f"RetryBudget(ratio={self.ratio!r}, min_retries_per_second="
            f"{self.min_retries_per_second!r}, window={self.window!r})"
        )
