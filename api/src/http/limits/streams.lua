-- A user's open event streams, fleet-wide: a sorted set of stream ids scored by expiry (ms of
-- Redis server time). A stream refreshes its entry every heartbeat; one whose replica died is
-- dropped once its expiry passes, so its slot comes back without anyone closing it.
-- KEYS[1]: the user's set. ARGV: mode ('open', 'refresh' or 'close'), stream id, ttl ms, limit.
-- open: 1 if added, 0 if the user already has `limit` live streams. refresh, close: 1.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mode = ARGV[1]
if mode == 'close' then
  redis.call('ZREM', KEYS[1], ARGV[2])
  return 1
end
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if mode == 'open' and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[2])
-- The set outlives its newest entry by nothing: an idle user leaves no key behind.
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
