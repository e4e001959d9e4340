"""Lua scripts run by :mod:`headway.backends.redis`, one round trip each, atomic in Redis.

Time is the Redis server's ``TIME`` (milliseconds, fractional), so the clocks of the
workers never matter. Only the test-suite passes an explicit ``now`` (``ARGV[6]``) to
compare the script step by step with :mod:`headway.backends._model`, its Python twin.
"""

from __future__ import annotations

__all__ = ["BREAKER_OPEN", "BREAKER_READ", "BREAKER_RELEASE", "BREAKER_TRIAL", "RESERVE"]

#: Reserve for a batch of callers, in order; each takes from every limit at once, all or
#: nothing.
#:
#: Each bucket is a hash ``{l: level, t: ms, s: total pause shift ms, p: pause end ms}``:
#: ``level`` units are available at server time ``t``. ``t`` may lie in the future: a
#: pause shifts it, and nothing refills before it. A reservation takes its units at once,
#: the level may go negative (debt), and the caller waits until the level would be back
#: at zero. Every limit is charged at the admission time (the latest of the limits'
#: queues), so the bucket moves to that time: later callers always wait at least as
#: long as earlier ones (FIFO whatever the weights, so large requests are never
#: starved), and no window of length ``T`` admits more than ``capacity + rate * T``.
#:
#: KEYS[1..n]  bucket hashes;  KEYS[n+1]  presence sorted set (live workers)
#: ARGV[1] n;  ARGV[2] k, the callers in the batch;
#: ARGV[3] pause ms (every bucket restarts empty at now + pause, its waiters shifted
#: by the pause's length; 0: none);
#: ARGV[4] worker id;  ARGV[5] presence window ms;  ARGV[6] now ms ('' = server TIME);
#: then for each limit i, 4 values: rate per ms, capacity,
#: adjust (refund > 0 / charge < 0, applied first), level cap ('' = none; from ``sync``);
#: then m, the number of cancelled reservations, and for each (latest first) its
#: admission time ms and its n amounts: given back to a limit only where the
#: cancelled reservation is last in that limit's queue or nobody waits any more (else a
#: newcomer would take the slot of a waiter still queued: a window over the limit);
#: then for each caller j: max_wait ms (negative: wait as long as needed), n amounts.
#: Returns {live workers, total pause shift ms, now ms, then admitted 1/0 and wait ms
#: for each caller}. A refused caller (wait over its max_wait) takes nothing.
RESERVE = """
local n = tonumber(ARGV[1])
local k = tonumber(ARGV[2])
local pause = tonumber(ARGV[3])
local now
if ARGV[6] ~= '' then
  now = tonumber(ARGV[6])
else
  local tm = redis.call('TIME')
  now = tonumber(tm[1]) * 1000 + tonumber(tm[2]) / 1000
end
-- A level above capacity at a future start means credit earlier on: move the start
-- back (never before now or the end of a pause) and cap the level.
local function norm(level, t, cap, rate, p)
  if level > cap then
    local back_t = t - (level - cap) / rate
    local floor = math.max(now, p)
    if back_t < floor then
      back_t = floor
    end
    level = math.min(cap, level - (t - back_t) * rate)
    t = back_t
  end
  return level, t
end
local levels, starts, rates, caps, shifts, pends = {}, {}, {}, {}, {}, {}
local shift = 0
local m = tonumber(ARGV[7 + n * 4])
local cbase = 7 + n * 4
for i = 1, n do
  local b = 6 + (i - 1) * 4
  local rate = tonumber(ARGV[b + 1])
  local cap = tonumber(ARGV[b + 2])
  local adjust = tonumber(ARGV[b + 3])
  local st = redis.call('HMGET', KEYS[i], 'l', 't', 's', 'p')
  local level = tonumber(st[1])
  local t = tonumber(st[2])
  local s = tonumber(st[3]) or 0
  local p = tonumber(st[4]) or 0
  if level == nil or t == nil then
    level = cap
    t = now
  end
  if now > t then
    level = math.min(cap, level + (now - t) * rate)
    t = now
  end
  level, t = norm(level + adjust, t, cap, rate, p)
  if ARGV[b + 4] ~= '' then
    level = math.min(level, tonumber(ARGV[b + 4]) + (t - now) * rate)
  end
  for j = 1, m do
    local c = cbase + (j - 1) * (n + 1)
    local back = tonumber(ARGV[c + 1 + i])
    local tail = math.max(now, t - level / rate)
    if back > 0 and (tonumber(ARGV[c + 1]) >= tail - 0.001 or tail <= now) then
      level, t = norm(level + back, t, cap, rate, p)
    end
  end
  if pause > 0 and now + pause > t then
    s = s + (now + pause - t)
    t = now + pause
    p = t
    if level > 0 then
      level = 0
    end
  end
  if s > shift then
    shift = s
  end
  levels[i], starts[i], rates[i], caps[i], shifts[i], pends[i] = level, t, rate, cap, s, p
end
local out = {0, string.format('%.17g', shift), string.format('%.17g', now)}
local rbase = cbase + m * (n + 1)
for j = 1, k do
  local r = rbase + (j - 1) * (n + 1)
  local max_wait = tonumber(ARGV[r + 1])
  local wait = 0
  local any = false
  for i = 1, n do
    local amount = tonumber(ARGV[r + 1 + i])
    if amount > 0 then
      any = true
    end
    local w = starts[i] - now
    if levels[i] < amount then
      w = w + (amount - levels[i]) / rates[i]
    end
    if w > wait then
      wait = w
    end
  end
  local ok = 1
  if max_wait >= 0 and wait > max_wait then
    ok = 0
  end
  if ok == 1 and any then
    -- every limit is used at admission, not before: project each bucket to then
    local at = now + wait
    for i = 1, n do
      if at > starts[i] then
        levels[i] = math.min(caps[i], levels[i] + (at - starts[i]) * rates[i])
        starts[i] = at
      end
      levels[i] = levels[i] - tonumber(ARGV[r + 1 + i])
    end
  end
  out[#out + 1] = ok
  out[#out + 1] = string.format('%.17g', wait)
end
for i = 1, n do
  local level, t = levels[i], starts[i]
  redis.call('HSET', KEYS[i], 'l', string.format('%.17g', level), 't',
    string.format('%.17g', t), 's', string.format('%.17g', shifts[i]), 'p',
    string.format('%.17g', pends[i]))
  local ttl = (t - now) + (caps[i] - level) / rates[i]
  redis.call('PEXPIRE', KEYS[i], math.ceil(ttl) + 1000)
end
local window = tonumber(ARGV[5])
local pkey = KEYS[n + 1]
redis.call('ZADD', pkey, now, ARGV[4])
redis.call('ZREMRANGEBYSCORE', pkey, '-inf', now - window)
redis.call('PEXPIRE', pkey, math.ceil(window) * 2)
out[1] = redis.call('ZCARD', pkey)
return out
"""

#: Read a breaker's shared state.
#: KEYS[1] state hash {until: server ms the open period ends, gen: generation}.
#: Returns {open 1/0, ms until the open period ends (<= 0: half-open), generation}.
BREAKER_READ = """
local st = redis.call('HMGET', KEYS[1], 'until', 'gen')
local gen = tonumber(st[2]) or 0
if st[1] == false then
  return {0, '0', gen}
end
local tm = redis.call('TIME')
local now = tonumber(tm[1]) * 1000 + tonumber(tm[2]) / 1000
return {1, string.format('%.17g', tonumber(st[1]) - now), gen}
"""

#: Open (ARGV[1] = recovery ms > 0) or close (ARGV[1] = 0) the circuit for everyone.
#: KEYS[1] state hash; KEYS[2..] half-open trial leases (freed on every transition).
#: ARGV[2] key lifetime ms after the open period ends (forgotten if nobody reports).
#: Returns the new generation.
BREAKER_OPEN = """
local recovery = tonumber(ARGV[1])
local gen = redis.call('HINCRBY', KEYS[1], 'gen', 1)
for i = 2, #KEYS do
  redis.call('DEL', KEYS[i])
end
if recovery > 0 then
  local tm = redis.call('TIME')
  local now = tonumber(tm[1]) * 1000 + tonumber(tm[2]) / 1000
  redis.call('HSET', KEYS[1], 'until', string.format('%.17g', now + recovery))
  redis.call('PEXPIRE', KEYS[1], math.ceil(recovery + tonumber(ARGV[2])))
else
  redis.call('HDEL', KEYS[1], 'until')
  redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])))
end
return gen
"""

#: Take one of the cluster-wide half-open trial leases (SET NX PX on each lease key).
#: KEYS[1] state hash; KEYS[2..] lease keys; ARGV[1] token; ARGV[2] lease ms.
#: Returns the lease index taken (1-based), 0 if all are taken, -1 if not half-open
#: (closed, or still open), with the ms until the open period ends as a string.
BREAKER_TRIAL = """
local u = redis.call('HGET', KEYS[1], 'until')
if u == false then
  return {-1, '0'}
end
local tm = redis.call('TIME')
local now = tonumber(tm[1]) * 1000 + tonumber(tm[2]) / 1000
local left = tonumber(u) - now
if left > 0 then
  return {-1, string.format('%.17g', left)}
end
for i = 2, #KEYS do
  if redis.call('SET', KEYS[i], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return {i - 1, '0'}
  end
end
return {0, '0'}
"""

#: Give a trial lease back if this worker still holds it (compare and delete).
#: KEYS[1] lease key; ARGV[1] token.  Returns 1 if released.
BREAKER_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
