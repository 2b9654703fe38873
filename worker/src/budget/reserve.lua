-- Chooses a key and reserves budget for one call, atomically, on Redis server time, giving
-- the slot to the user with the least service among those waiting for this model.
-- KEYS: per candidate i: calls zset, tokens counter, day counter, cooldown hash; then the
--       disabled hash, the model's fair-share virtual times (hash) and waiting users (zset).
-- ARGV: n, estimate, inflight_ms, reservation id, ms until Pacific midnight,
--       then per candidate: alias, rpm, tpm, rpd, window_ms, weight;
--       then the user ('' for no fair share) and how long a wait stays noted without renewal.
-- Returns {index, 0, calls left today} on success (index among the candidates passed; the
-- calls left on the chosen project and model after this one), {0, wait_ms} when no
-- candidate has budget (wait_ms = -1 when every candidate is disabled, or there is none) or
-- when it is another waiting user's turn.
--
-- Fair shares (max-min, by calls): each user has a virtual time per model, the calls granted
-- to them while anyone waited; a user who starts waiting is raised to the least virtual time
-- among the users already waiting, so idle time banks no credit. A slot goes to a user only while no other
-- waiting user has a smaller virtual time. Users whose calls were turned away (for budget or
-- for turn) are noted as waiting for a moment, renewed by each try.
-- The caller leaves out keys it cannot use now (a cooling egress route), so they cost nothing.
-- Times are in ms to the microsecond (scores are doubles): a slot frees at its exact time,
-- not up to a millisecond later.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local n = tonumber(ARGV[1])
local estimate = tonumber(ARGV[2])
local inflight = tonumber(ARGV[3])
local rid = ARGV[4]
local until_midnight = tonumber(ARGV[5])
local disabled = KEYS[#KEYS - 2]
local served, waiting = KEYS[#KEYS - 1], KEYS[#KEYS]
local user = ARGV[5 + n * 6 + 1]
local wait_ttl = tonumber(ARGV[5 + n * 6 + 2])

-- Where the user stands: their virtual time, and the least among the others waiting.
local vt, floor, was_waiting = 0, nil, false
if user ~= '' then
  redis.call('ZREMRANGEBYSCORE', waiting, '-inf', now)
  for _, w in ipairs(redis.call('ZRANGE', waiting, 0, -1)) do
    if w == user then
      was_waiting = true
    else
      local v = tonumber(redis.call('HGET', served, w) or '0')
      if floor == nil or v < floor then floor = v end
    end
  end
  vt = tonumber(redis.call('HGET', served, user) or '0')
  if not was_waiting and floor ~= nil and vt < floor then vt = floor end
end
local function note_waiting()
  if user ~= '' then
    redis.call('ZADD', waiting, now + wait_ttl, user)
    redis.call('PEXPIRE', waiting, wait_ttl * 4)
    redis.call('HSET', served, user, vt)
    redis.call('PEXPIRE', served, 3600000)
  end
end

local best, best_headroom, best_weight, best_left = nil, -1, -1, 0
local earliest = nil
local function wait_at_least(ms)
  -- Whole ms, rounded up: the reply is an integer, and a waiter woken early wastes a try.
  ms = math.ceil(ms)
  if ms < 1 then ms = 1 end
  if earliest == nil or ms < earliest then earliest = ms end
end

for i = 1, n do
  local a = 5 + (i - 1) * 6
  local alias = ARGV[a + 1]
  local rpm, tpm, rpd = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local window, weight = tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6])
  local k = (i - 1) * 4
  local calls, tokens_key, day, cool = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
  if redis.call('HEXISTS', disabled, alias) == 0 then
    local cool_until = tonumber(redis.call('HGET', cool, 'until') or '0')
    if cool_until > now then
      wait_at_least(cool_until - now)
    else
      -- A slot frees one window after the provider took its call: in-flight calls score in
      -- the future until the call's first streamed event dates them (a mid-call mark or the
      -- completion), or, for a call with none, its completion. Expired entries take their
      -- tokens with them; the rest is counted, not scanned.
      local expired = redis.call('ZRANGEBYSCORE', calls, '-inf', now - window)
      if #expired > 0 then
        local gone = 0
        for j = 1, #expired do
          gone = gone + tonumber(string.match(expired[j], ':(%d+)$') or '0')
        end
        redis.call('DECRBY', tokens_key, gone)
        redis.call('ZREMRANGEBYSCORE', calls, '-inf', now - window)
      end
      local used = redis.call('ZCARD', calls)
      local tokens = math.max(0, tonumber(redis.call('GET', tokens_key) or '0'))
      local today = tonumber(redis.call('GET', day) or '0')
      -- A call larger than the whole tpm may still go alone.
      local need = math.min(estimate, tpm)
      if used < rpm and tokens + need <= tpm and today < rpd then
        local headroom = math.min((rpm - used) / rpm, (tpm - tokens - need + 1) / tpm, (rpd - today) / rpd)
        if headroom > best_headroom or (headroom == best_headroom and weight > best_weight) then
          best, best_headroom, best_weight, best_left = i, headroom, weight, rpd - today - 1
        end
      elseif today >= rpd then
        wait_at_least(until_midnight)
      elseif used > 0 then
        local oldest = redis.call('ZRANGE', calls, 0, 0, 'WITHSCORES')
        wait_at_least(tonumber(oldest[2]) + window - now)
      else
        wait_at_least(window)
      end
    end
  end
end

if best == nil then
  note_waiting()
  return {0, earliest or -1}
end
if floor ~= nil and floor < vt then
  -- Budget is there, but a user served less is waiting for it: their turn.
  note_waiting()
  return {0, 25}
end
-- Service is counted only while someone waits: without contention every try is served at
-- once, and a user who starts waiting is raised to the floor anyway.
if floor ~= nil or was_waiting then
  redis.call('HSET', served, user, vt + 1)
  redis.call('PEXPIRE', served, 3600000)
  -- Still noted as waiting for a moment: the user's other deliveries (asleep between tries)
  -- keep their place; a user with none left lapses within it.
  redis.call('ZADD', waiting, now + math.min(wait_ttl, 300), user)
end
local a = 5 + (best - 1) * 6
local k = (best - 1) * 4
local calls, tokens_key, day = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
local ttl = inflight + 2 * tonumber(ARGV[a + 5])
redis.call('ZADD', calls, now + inflight, rid .. ':' .. estimate)
redis.call('PEXPIRE', calls, ttl)
redis.call('INCRBY', tokens_key, estimate)
redis.call('PEXPIRE', tokens_key, ttl)
redis.call('INCR', day)
redis.call('PEXPIRE', day, until_midnight + 3600000)
return {best, 0, best_left}
