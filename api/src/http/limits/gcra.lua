-- GCRA as `governor` does it, over several limits at once, on Redis server time (microseconds).
-- Each limit keeps one value, its theoretical arrival time (TAT). With emission interval T
-- (period / limit) and tolerance tau = T * (burst - 1), a cell conforms when now >= TAT - tau,
-- and taking it moves TAT to max(TAT, now) + T. A missing key is a full bucket.
-- KEYS: one TAT key per limit.
-- ARGV: mode ('take' or 'peek'), then per limit: T (microseconds), burst.
-- 'take' spends one cell of every limit only if ALL conform; 'peek' changes nothing.
-- Returns {taken (1/0), then per limit: remaining, wait_us (0 unless refused), reset_us}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local take = ARGV[1] == 'take'
local n = #KEYS
local tats, emissions, taus = {}, {}, {}
local conforms = true
for i = 1, n do
  local emission = tonumber(ARGV[2 * i])
  local tau = emission * (tonumber(ARGV[2 * i + 1]) - 1)
  local tat = tonumber(redis.call('GET', KEYS[i]) or now) or now
  if tat < now then tat = now end
  tats[i], emissions[i], taus[i] = tat, emission, tau
  if now < tat - tau then conforms = false end
end

local taken = take and conforms
local out = {taken and 1 or 0}
for i = 1, n do
  local tat, emission, tau = tats[i], emissions[i], taus[i]
  local wait = 0
  if now < tat - tau then wait = tat - tau - now end
  if taken then
    tat = tat + emission
    -- Past its TAT a key is the same as a missing one, so it may expire then. '%.0f' keeps
    -- every digit (Lua's default number format would round a microsecond timestamp).
    redis.call('SET', KEYS[i], string.format('%.0f', tat),
      'PX', string.format('%.0f', math.ceil((tat - now) / 1000) + 1))
  end
  local remaining = math.floor(math.min(now + tau + emission - tat, tau + emission) / emission)
  if remaining < 0 then remaining = 0 end
  out[#out + 1] = remaining
  out[#out + 1] = wait
  out[#out + 1] = tat - now
end
return out
