"""AdaptiveLimiter against FakeAPI's enforcement profiles, in virtual time.

The driver does what the retry engine does with a limiter (reserve, wait, send, feed the
headers, then ``on_success`` or ``on_rate_limited``), so the control loop is tested on
its own; the Endpoint and ``headway run`` tests cover the wiring.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headway import ManualClock
from headway._clock import resolve_clock
from headway.backends.ray import RayAdaptiveLimiter, RayBackend, SharedState
from headway.batch.sender import UNPACED_RPM
from headway.errors import ConfigurationError, QuotaExceededError, RateLimitError
from headway.http.status import error_for_status
from headway.limits import AdaptiveLimiter, Limiter
from headway.limits.adaptive import RATE_CHANGED, RateChanged, RateControl
from headway.testing import FakeAPI
from headway.testing._fake_limits import PROFILES

CHAT = "/v1/chat/completions"
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
#: The longest a rate 429 is honoured (the engine's max_server_delay).
MAX_SERVER_DELAY = 60.0


@dataclass
class Outcome:
    ok: int = 0
    rate_limited: int = 0
    failed: list[str] = field(default_factory=list)
    done_at: list[float] = field(default_factory=list)


async def drive(
    api: FakeAPI, limiter: AdaptiveLimiter, lines: int, *, workers: int = 16, tokens: float = 0.0
) -> Outcome:
    """Send ``lines`` requests through ``limiter`` as the retry engine would."""
    out = Outcome()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(lines):
        queue.put_nowait(i)
    loop = asyncio.get_running_loop()

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            queue.get_nowait()
            for _ in range(200):
                reservation = limiter.reserve_nowait(1.0, tokens)
                if reservation is None:
                    reservation = await limiter.reserve(1.0, tokens)
                await reservation.wait()
                async with session.post(api.url + CHAT, json=BODY) as resp:
                    content = await resp.read()
                    limiter.observe_headers(resp.headers)
                    if resp.status == 200:
                        limiter.on_success()
                        out.ok += 1
                        out.done_at.append(loop.time())
                        break
                    err = error_for_status(resp.status, resp.headers, content, "POST", api.url)
                    if isinstance(err, QuotaExceededError) or not isinstance(err, RateLimitError):
                        out.failed.append(type(err).__name__)
                        break
                    out.rate_limited += 1
                    delay = err.retry_after
                    if delay is not None:
                        delay = min(delay, MAX_SERVER_DELAY)
                    limiter.on_rate_limited(delay, empty=err.bucket_empty)
                    # this request alone backs off a little before reserving again
                    await asyncio.sleep(delay if delay is not None else 0.05)
            else:  # pragma: no cover - a line that never got through
                out.failed.append("gave up")

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(workers)))
    return out


def rate_after(out: Outcome, start: float) -> float:
    """Answers per minute from ``start`` (clock time) to the last answer."""
    times = [t for t in out.done_at if t >= start]
    if len(times) < 2:
        return 0.0
    return (len(times) - 1) / (times[-1] - times[0]) * 60.0


def frames_after(admitted: list[float], start: float) -> tuple[dict[int, int], list[int]]:
    """Admissions per 10 s frame as the server counted them, and the counts of the whole
    frames from ``start`` on (the last, cut short by the end, left out)."""
    per_frame: dict[int, int] = {}
    for t in admitted:
        per_frame[math.floor(t / 10.0)] = per_frame.get(math.floor(t / 10.0), 0) + 1
    return per_frame, [n for k, n in sorted(per_frame.items()) if k * 10.0 >= start][:-1]


LIMIT = 240.0  # the server's real limit, per minute


@pytest.mark.virtual_time
@pytest.mark.parametrize("profile", PROFILES)
async def test_no_user_limit_every_profile_no_failed_line(profile: str) -> None:
    async with FakeAPI(profile=profile, rpm=LIMIT) as api:
        limiter = AdaptiveLimiter()
        t0 = asyncio.get_running_loop().time()
        out = await drive(api, limiter, 200)
    assert out.failed == []
    assert out.ok == 200
    assert out.rate_limited <= 0.08 * out.ok, out
    if profile != "shared":
        # azure enforces in 10 s frames and advertises no limit: its frames are learned
        # from two or three frame starts (about 30 s), and the rate before depends on
        # where the frames fall (79-98% after 15 s, 94-97% after 30 s)
        achieved = rate_after(out, t0 + (30.0 if profile == "azure" else 15.0))
        floor = 0.9 if profile == "azure" else 0.85
        assert achieved >= floor * LIMIT, (achieved, out.rate_limited)


@pytest.mark.virtual_time
@pytest.mark.parametrize("profile", PROFILES)
async def test_ceiling_ten_times_the_real_limit_no_failed_line(profile: str) -> None:
    async with FakeAPI(profile=profile, rpm=LIMIT) as api:
        limiter = AdaptiveLimiter(rpm=10 * LIMIT)
        out = await drive(api, limiter, 120)
    assert out.failed == []
    assert out.rate_limited <= 0.1 * out.ok, out


@pytest.mark.virtual_time
@pytest.mark.parametrize("profile", PROFILES)
async def test_ceiling_half_the_real_limit_is_never_exceeded(profile: str) -> None:
    ceiling = LIMIT / 2
    async with FakeAPI(profile=profile, rpm=LIMIT) as api:
        limiter = AdaptiveLimiter(rpm=ceiling)
        t0 = asyncio.get_running_loop().time()
        out = await drive(api, limiter, 100)
        burst = limiter.limiters[0].max_tokens
        # after the first calls booked before the first answer said anything
        most = api.max_in_window(30.0, "POST", CHAT, after=t0 + 5.0)
        ten = api.max_in_window(10.0, "POST", CHAT, after=t0 + 5.0)
    assert out.failed == []
    assert out.rate_limited == 0
    assert most <= ceiling / 2 + burst
    assert ten <= ceiling / 6 + burst
    assert limiter.rate_in_force() == (ceiling, "user")


@pytest.mark.virtual_time
async def test_advertised_limit_is_used_at_once_and_ceiling_holds() -> None:
    async with FakeAPI(profile="openai", rpm=600, tpm=100_000) as api:
        changes: list[Any] = []
        limiter = AdaptiveLimiter(rpm=400, listeners=(changes.append,))
        out = await drive(api, limiter, 50, workers=4, tokens=20)
    assert out.failed == []
    assert limiter.rate_in_force() == (400.0, "user")
    assert limiter.rate_in_force("tokens") == (100_000.0, "server")
    assert limiter.learned_limits() == {"requests": 600.0, "tokens": 100_000.0}
    assert isinstance(changes[0], RateChanged)
    assert changes[0].reason == "advertised"
    assert changes[0].kind == RATE_CHANGED
    assert {c.unit for c in changes} == {"requests", "tokens"}


@pytest.mark.virtual_time
async def test_shared_key_lowers_then_recovers() -> None:
    async with FakeAPI(profile="shared", rpm=LIMIT, burst=10) as api:
        shared = api.limits
        limiter = AdaptiveLimiter()
        out = await drive(api, limiter, 200)
        assert shared.name == "shared"
    assert out.failed == []
    # another client takes up to 80% of a small bucket: 429s are the only signal
    assert out.rate_limited <= 0.2 * out.ok


@pytest.mark.virtual_time
async def test_silent_server_is_probed_and_converges() -> None:
    async with FakeAPI(profile="silent", rpm=300) as api:
        limiter = AdaptiveLimiter()
        t0 = asyncio.get_running_loop().time()
        out = await drive(api, limiter, 300)
        learned = limiter.learned_limits()["requests"]
    assert out.failed == []
    assert 0.6 * 300 <= learned <= 1.2 * 300
    assert rate_after(out, t0 + 20.0) >= 0.8 * 300


@pytest.mark.virtual_time
async def test_demo_style_429_with_room_left_does_not_pause_or_slow() -> None:
    limiter = AdaptiveLimiter(rpm=600)
    limiter.observe_headers({"x-ratelimit-limit-requests": "650"})
    before = limiter.rate_in_force()
    limiter.on_rate_limited(1.0, empty=False)
    assert limiter.rate_in_force() == before
    assert limiter.limiters[0].paused_until is None
    assert limiter.rate_limited_count == 1
    limiter.on_rate_limited(2.0, empty=True)
    assert limiter.limiters[0].paused_until is not None
    assert limiter.rate_in_force() is not None
    assert limiter.rate_in_force()[0] < 600


def test_control_law_ceiling_advertised_probe() -> None:
    c = RateControl(ceiling=100.0, start=60.0)
    assert (c.rate, c.source) == (60.0, "server")
    assert c.advertise(50.0, 0.0)
    assert (c.rate, c.source) == (50.0, "server")
    assert not c.advertise(50.0, 0.0)
    assert c.advertise(500.0, 0.0)
    assert (c.rate, c.source) == (100.0, "user")
    assert not c.rate_limited(1.0)  # 500 * 0.85 is still above the ceiling
    assert c.rate == 100.0
    assert c.share < 1.0
    assert not c.rate_limited(1.5)  # within the hold: one signal
    assert not c.room()
    assert c.share == 1.0
    assert not c.room()
    p = RateControl(ceiling=None, start=60.0)
    assert not p.succeeded(0.0)
    assert p.succeeded(1.0)
    assert p.rate == pytest.approx(90.0)
    assert p.rate_limited(2.0)
    assert p.rate == pytest.approx(45.0)
    assert not p.slow_start
    # far below the rate of the 429: back fast (after slow start, to 60% of it)
    assert p.succeeded(3.0)
    assert p.rate == pytest.approx(45.0 + 0.1 * 90.0)
    assert p.succeeded(13.0)  # then slowly (one second counts at most)
    assert p.rate == pytest.approx(0.6 * 90.0 + 0.015 * 90.0)
    assert p.rate_limited(14.0)  # past slow start: down by 15%, back fast to 90%
    peak = 0.6 * 90.0 + 0.015 * 90.0
    assert p.rate == pytest.approx(0.85 * peak)
    assert p.succeeded(14.5)
    assert p.rate == pytest.approx(0.85 * peak + 0.05 * peak)
    assert p.succeeded(15.5)
    assert p.rate == pytest.approx(0.9 * peak)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["ok", "429", "adv"]),
            st.floats(0.0, 5.0),
            st.floats(1.0, 1e5),
        ),
        max_size=60,
    ),
    st.one_of(st.none(), st.floats(1.0, 1e5)),
)
def test_rate_never_exceeds_the_ceiling_and_stays_positive(
    steps: list[tuple[str, float, float]], ceiling: float | None
) -> None:
    c = RateControl(ceiling=ceiling, start=60.0)
    now = 0.0
    for kind, dt, value in steps:
        now += dt
        if kind == "ok":
            c.succeeded(now)
        elif kind == "429":
            c.rate_limited(now)
        else:
            c.advertise(value, now)
        assert c.rate > 0.0
        assert math.isfinite(c.rate)
        if ceiling is not None:
            assert c.rate <= ceiling
        if c.advertised is not None:
            assert c.rate <= c.advertised


def test_limiter_protocol_and_validation() -> None:
    clock = ManualClock()
    limiter = AdaptiveLimiter(rpm=120, tpm=1000, clock=clock, name="x")
    assert isinstance(limiter, Limiter)
    assert limiter.clock is clock
    assert "limited by server" in repr(limiter)
    for bad in ({"rpm": 0}, {"tpm": math.inf}, {"start_rpm": -1}, {"burst_seconds": 0}):
        with pytest.raises(ConfigurationError):
            AdaptiveLimiter(**bad)  # type: ignore[arg-type]
    assert AdaptiveLimiter().rate_in_force("tokens") is None
    assert AdaptiveLimiter().learned_limits() == {}


@pytest.mark.virtual_time
async def test_reserve_slot_pause_sync_and_events() -> None:
    seen = []
    from headway import events

    events.add_listener(seen.append)
    try:
        limiter = AdaptiveLimiter(rpm=60, tpm=600, name="t")
        r = await limiter.reserve(1, 10)
        assert r.delay == 0.0
        async with limiter.slot(1, 10):
            pass
        limiter.sync("requests", 0)
        limiter.pause(0.5)
        limiter.pause_until(asyncio.get_running_loop().time() + 1.0)
        assert limiter.limiters[0].paused_until is not None
        limiter.observe_headers(
            {"x-ratelimit-limit-requests": "30", "x-ratelimit-limit-tokens": "x"}
        )
        limiter.observe_headers(
            {
                "x-ratelimit-limit-requests": "30",
                "x-ratelimit-remaining-requests": "1",
                "x-ratelimit-remaining-tokens": "5",
                "x-ratelimit-limit-tokens": "300",
            }
        )
        limiter.observe_headers({"x-ratelimit-remaining-requests": "bad"})
    finally:
        events.remove_listener(seen.append)
    kinds = [e.kind for e in seen]
    assert RATE_CHANGED in kinds
    changed = [e for e in seen if e.kind == RATE_CHANGED]
    assert changed[0].data["limited_by"] == "server"
    assert limiter.rate_in_force() == (30.0, "server")
    assert limiter.rate_in_force("tokens") == (300.0, "server")


@pytest.mark.virtual_time
async def test_shared_bucket_is_followed_from_its_remaining_counts() -> None:
    """Another client takes 0% -> 50% -> 80% -> 0% of a 5 s bucket: follow what it leaves."""
    limit = 1200.0
    async with FakeAPI(profile="shared", rpm=limit, burst=limit / 60.0 * 5.0) as api:
        shared = api.limits
        limiter = AdaptiveLimiter()
        loop = asyncio.get_running_loop()
        start = loop.time() + 10.0  # after the start (probing begins at 60/min)

        async def level_then() -> float:
            await asyncio.sleep(10.0)
            meter = shared.meters(loop.time())[0]
            assert meter is not None
            return meter.level

        level_task = asyncio.create_task(level_then())
        out = await drive(api, limiter, 1000, workers=32)
        end = out.done_at[-1]
        level_at_start = await level_task
        meter = shared.meters(end)[0]
        assert meter is not None
        other = shared.other_share  # type: ignore[attr-defined]
        steps = [start + 0.05 + i * 0.1 for i in range(int((end - start) / 0.1))]
        # what the other client leaves, plus what the bucket held at the start and spent
        available = sum(1.0 - other(t) for t in steps) / len(steps) * limit
        available += (level_at_start - meter.level) / (end - start) * 60.0
    assert out.failed == []
    assert out.rate_limited <= 0.02 * (out.ok + out.rate_limited), out.rate_limited
    achieved = len([t for t in out.done_at if t >= start]) / (end - start) * 60.0
    assert achieved >= 0.9 * available, (achieved, available)
    assert limiter.requests.others >= 0.0


async def test_headerless_429_right_after_room_was_reported_backs_off_alone() -> None:
    clock = ManualClock()
    limiter = AdaptiveLimiter(rpm=3000, clock=clock)
    full = {"x-ratelimit-limit-requests": "3000", "x-ratelimit-remaining-requests": "2990"}
    limiter.observe_headers(full)
    before = limiter.rate_in_force()
    limiter.on_rate_limited(0.1, empty=True)  # a 429 with only Retry-After: chaos, not rate
    assert limiter.rate_in_force() == before
    assert limiter.limiters[0].paused_until is None
    clock.advance(3.0)  # the room reported is stale now: the 429 speaks for the bucket
    limiter.on_rate_limited(0.1, empty=True)
    assert limiter.limiters[0].paused_until is not None
    limiter.observe_headers({**full, "x-ratelimit-remaining-requests": "0"})
    clock.advance(1.0)
    limiter.on_rate_limited(None, empty=True)  # the server said 0 left: it is the bucket
    assert limiter.rate_limited_count == 3
    rate = limiter.rate_in_force()
    assert rate is not None
    assert rate[0] < 3000


def test_tracking_needs_an_advertised_limit_and_a_refilling_bucket() -> None:
    c = RateControl(ceiling=None, start=60.0)
    assert not c.track(20.0, 0.0, None)  # a fixed window: only the level is noted
    assert (c.left, c.capacity) == (20.0, 20.0)
    assert not c.track(9.0, 0.0, 0.0)  # nothing advertised: nothing to follow
    c.advertise(600.0, 0.0)
    assert not c.track(9.0, 0.5, 1.0)  # less than a step since the mark
    # one second: 10 refilled, we took 2, the level fell by 4: others took 12 (720/min)
    assert c.track(5.0, 1.0, 2.0)
    assert c.others == pytest.approx(0.5 * 720.0)
    assert c.rate == pytest.approx(600.0 - 360.0 - 5.0 * 60.0 / 5.0)  # refill to half full
    assert c.has_room(1.5) is True
    assert c.has_room(10.0) is False  # stale


@pytest.mark.virtual_time
async def test_frame_server_without_a_limit_header_is_learned_from_its_counts() -> None:
    """Azure admits limit/6 per 10 s frame and says no limit, only what is left: the
    frames are learned from the count jumping back up (length, allowance), and the rate
    settles just under the frame's allowance with about no 429."""
    limit = 1200.0
    async with FakeAPI(profile="azure", rpm=limit) as api:
        limiter = AdaptiveLimiter()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        rates: list[float] = []

        async def watch() -> None:
            while True:
                await asyncio.sleep(5.0)
                if loop.time() - t0 >= 45.0:
                    rates.append(limiter.requests.rate)

        watcher = asyncio.create_task(watch())
        try:
            out = await drive(api, limiter, 1400, workers=32)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        admitted = [r.time for r in api.requests if r.status == 200]
    assert out.failed == []
    assert out.rate_limited <= 0.01 * out.ok
    assert rates
    # each frame's allowance (200) paced over the time the frame may have left: about
    # the frame's rate, faster while its length or phase is still uncertain
    assert all(0.97 * limit <= rate <= 1.5 * limit for rate in rates), rates
    frame = limiter.requests.frame
    assert frame is not None
    assert frame == pytest.approx(10.0, rel=0.025)
    assert rate_after(out, t0 + 30.0) >= 0.95 * limit
    # once learned, the frames the server counted are used almost up to their allowance:
    # together to >= 97.5% (98.25-100% over 60 phases of the clock), each to >= 95% (the
    # bar). A few calls of a frame are lost when everyone waited for the latest start the
    # learned frames allow, or when the allowance ran out a little before the frame's end.
    per_frame, full = frames_after(admitted, t0 + 40.0)
    assert full, per_frame
    assert sum(full) >= 0.975 * 200 * len(full), per_frame
    assert all(n >= 190 for n in full), per_frame


def test_a_frames_allowance_is_paced_over_the_time_it_may_have_left() -> None:
    """A wide range of frame lengths does not cost a part of every frame: the allowance
    goes at the pace that uses it by an end halfway between the earliest and the latest
    this frame may have."""
    c = RateControl(ceiling=None, start=60.0)
    c.track(199.0, 0.0, None)
    c.track(150.0, 4.0, None)
    assert not c.track(199.0, 4.01, None)  # a start in (4.0, 4.01]
    c.track(0.0, 8.0, None)
    c.frame_ends(8.0, 7.0)  # a whole-second Retry-After: the frame ends in (14, 15]
    assert c.track(199.0, 15.0, None)  # a start in (14, 15]: lengths in (9.99, 11.0]
    low, high = c._frame_range
    assert (low, high) == pytest.approx((9.99, 11.0))
    assert c.frame == pytest.approx(11.0)
    # ends between 14 + 9.99 and 15 + 11.0: aims at the middle, 9.995 s from now
    assert c.rate == pytest.approx(199.0 * 60.0 / 9.995)
    # a start seen at last late in its frame: no faster than over half the longest length
    c.track(0.0, 25.0, None)
    assert c.track(199.0, 40.0, None)
    assert c.rate == pytest.approx(199.0 * 60.0 / (0.5 * c._frame_range[1]))


@pytest.mark.virtual_time
async def test_a_used_frame_pauses_everyone_until_the_next_one() -> None:
    """The count reaching zero once the frames are known: nobody goes (no 429) before
    the latest the next frame may start."""
    clock = ManualClock()
    limiter = AdaptiveLimiter(clock=clock)
    for left, at in ((199.0, 0.0), (150.0, 4.0), (199.0, 4.01), (0.0, 8.0)):
        clock.advance(at - clock.now())
        limiter.observe_headers({"x-ratelimit-remaining-requests": str(int(left))})
    assert limiter.requests.frame is None  # one start: nothing to wait for yet
    limiter.on_rate_limited(7.0, empty=True)  # paused until 15 s, the frame ends in (14, 15]
    clock.advance(15.0 - clock.now())
    limiter.observe_headers({"x-ratelimit-remaining-requests": "199"})
    assert limiter.requests.frame == pytest.approx(11.0)
    clock.advance(24.0 - clock.now())
    limiter.observe_headers({"x-ratelimit-remaining-requests": "0"})
    assert limiter.reserve_nowait() is None  # nobody goes now
    # the latest the next frame may start: 15 s + the longest length, 11 s
    clock.advance(26.0 - clock.now())
    reservation = limiter.reserve_nowait()
    assert reservation is not None
    assert reservation.delay == pytest.approx(0.0, abs=0.1)


def test_frames_are_measured_from_count_jumps_and_a_429s_delay() -> None:
    c = RateControl(ceiling=None, start=60.0)
    assert not c.track(199.0, 0.0, None)  # the first count: nothing jumped
    assert not c.track(150.0, 4.0, None)
    assert not c.track(199.0, 4.1, None)  # a frame starts in (4.0, 4.1]: one start
    assert c.frame is None
    assert not c.track(0.0, 8.0, None)
    c.frame_ends(8.0, 3.0)  # a 429: come back in 3 s (whole seconds: the end in (10, 11])
    assert not c.track(10.0, 8.5, None)  # a small rise: answers out of order, no jump
    assert c.track(198.0, 14.0, None)  # paused until 14 s, but the 429 said (10, 11]
    assert c.frame is not None
    low, high = c._frame_range
    assert (low, high) == pytest.approx((5.9, 7.0))
    assert c.frame == pytest.approx(7.0)  # the longest the starts allow
    # the frame's allowance paced over less than the longest length, half of it at least
    assert 199.0 * 60.0 / 7.0 < c.rate <= 199.0 * 60.0 / 3.5
    assert c.source == "server"
    # a later start narrows it: 2 frames from the first, within (4.0, 4.1) + (16, 16.1)
    assert not c.track(5.0, 15.98, None)
    assert c.track(199.0, 16.06, None)
    assert c._frame_range == pytest.approx(((15.98 - 4.1) / 2, (16.06 - 4.0) / 2))
    assert c.frame == pytest.approx(6.03)
    assert 199.0 * 60.0 / 6.03 < c.rate <= 199.0 * 60.0 / (0.5 * 6.03)
    # a 429 once the frames are known: wait for the next frame, not for a rounded delay
    assert c.counts_frames
    assert c.frame_wait(17.0, 60.0) == pytest.approx(16.06 + 6.03 - 17.0)
    assert c.frame_wait(17.0, 0.5) is None  # the server says sooner: its word holds
    assert not c.rate_limited(17.0)  # frames: the rate learned holds, nobody slows
    # starts that fit no common length: measured again from the latest
    assert not c.track(0.0, 17.5, None)
    assert not c.track(199.0, 17.6, None)
    assert c._frame_range == (0.0, math.inf)


def test_frames_are_not_learned_where_a_limit_is_advertised() -> None:
    c = RateControl(ceiling=None, start=60.0)
    c.advertise(1200.0, 0.0)
    c.frame_ends(1.0, 2.0)
    assert c._frame_hint is None
    assert not c.track(100.0, 0.0, None)
    assert not c.track(0.0, 1.0, None)
    assert not c.track(199.0, 2.0, None)
    assert not c.track(0.0, 3.0, None)
    assert not c.track(199.0, 4.0, None)
    assert c.frame is None
    assert c.frame_wait(5.0, None) is None
    assert c.rate == 1200.0


async def test_try_take_serves_a_policy_attempt_only_when_nothing_is_left_to_settle() -> None:
    from headway import Policy

    seen: list[object] = []

    async def attempt(ctx: Any) -> None:
        seen.append(ctx.reservation)

    limiter = AdaptiveLimiter(start_rpm=6_000, burst_seconds=60.0, clock=ManualClock())
    policy = Policy(retry=None, limiter=limiter)
    before = limiter.limiters[0].tokens
    await policy.run(attempt)  # no tokens limit, no estimate: the turn is taken, no object
    assert seen == [None]
    assert limiter.limiters[0].tokens == pytest.approx(before - 1)
    await policy.run(attempt, tokens=50)  # an estimate is recorded on a reservation
    assert seen[1] is not None

    with_tpm = AdaptiveLimiter(tpm=100_000)
    assert not with_tpm.try_take()  # a tokens limit: reserve, so that settle() counts

    class Own(AdaptiveLimiter):
        def reserve_nowait(self, *args: Any, **kwargs: Any) -> Any:
            return super().reserve_nowait(*args, **kwargs)

    assert not Own(start_rpm=6_000).try_take()  # its own reserving is not bypassed


def test_try_take_refuses_a_call_that_would_wait() -> None:
    limiter = AdaptiveLimiter(rpm=60, burst_seconds=1.0, clock=ManualClock())
    assert limiter.try_take()
    assert not limiter.try_take()  # the burst is spent: reserve_nowait says how long
    assert limiter.reserve_nowait() is not None


class _Remote:
    """``handle.method.remote(...)`` of a Ray actor, run in this process after a short trip."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def remote(self, *args: Any) -> Any:
        async def trip() -> Any:
            await asyncio.sleep(0.001)
            return self.fn(*args)

        return trip()


class _LocalActor:
    """The named actor's :class:`SharedState`, in this process (no Ray needed)."""

    def __init__(self) -> None:
        state = SharedState(now=resolve_clock(None).now)
        self.reserve = _Remote(state.reserve)
        self.breaker = _Remote(state.breaker)
        self.learned = _Remote(state.learned)


@pytest.mark.virtual_time
async def test_workers_sharing_a_limit_learn_a_frame_server_together() -> None:
    """Two workers on one shared limit, starting unpaced as ``headway run`` without
    ``--rpm`` does, against Azure's frames: they learn the frames (not only halve on
    429s), share the frame's pace, and use about every frame up with few 429s."""
    limit = 1200.0
    actor = _LocalActor()
    async with FakeAPI(profile="azure", rpm=limit) as api:
        backends = [RayBackend(actor=actor), RayBackend(actor=actor)]
        limiters = [RayAdaptiveLimiter(b, "az", start_rpm=UNPACED_RPM) for b in backends]
        t0 = asyncio.get_running_loop().time()
        outs = await asyncio.gather(*(drive(api, lim, 1200, workers=16) for lim in limiters))
        admitted = [r.time for r in api.requests if r.status == 200]
        for b in backends:
            await b.aclose()
    ok = sum(out.ok for out in outs)
    assert ok == 2400
    assert [out.failed for out in outs] == [[], []]
    assert sum(out.rate_limited for out in outs) <= 0.005 * ok
    for lim in limiters:
        assert lim.requests.frame == pytest.approx(10.0, rel=0.025)
        assert 0.95 * limit <= lim.requests.rate <= 1.1 * limit
    # the frames from the fifth frame start on (t0 + 40 s), as the one-limiter test
    # counts them: learning a frame takes the first three or four, by the frames' phase
    per_frame, full = frames_after(admitted, t0 + 40.0)
    assert full, per_frame
    assert sum(full) >= 0.975 * 200 * len(full), per_frame
    assert all(n >= 190 for n in full), per_frame
