-- One request's admission for every instance on this Redis (S1), atomic: money,
-- token quota, then every rate rule (filters/src/rolling.rs, the same algorithm);
-- counts the request in each rule only when everything passes. Redis's clock is
-- every instance's clock.
--
-- KEYS: balance, spend, tokens, then a (log, total) pair per rule. A log is a list
--       of "bucket:count", oldest first; the total is their sum.
-- ARGV: balance seed ('' = not metered), spend seed, budget ('' = none), tokens
--       seed, quota ('' = none), spend ttl ms, then limit, window ms, bucket ms
--       per rule. Money in nano-units.
-- Reply: {0, now, at, left, reset_ms, ...per rule} | {1, rule, wait_ms}
--        | {2, balance} | {3} | {4}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- Seeds a missing figure from the caller's store (SET NX in effect).
local function figure(key, seed, ttl)
  local v = redis.call('GET', key)
  if v then return tonumber(v) end
  if ttl then
    redis.call('SET', key, seed, 'PX', ttl)
  else
    redis.call('SET', key, seed)
  end
  return tonumber(seed)
end

if ARGV[1] ~= '' then
  local balance = figure(KEYS[1], ARGV[1])
  if balance <= 0 then return {2, balance} end
end
if ARGV[3] ~= '' then
  if figure(KEYS[2], ARGV[2], tonumber(ARGV[6])) >= tonumber(ARGV[3]) then return {3} end
end
if ARGV[5] ~= '' then
  if figure(KEYS[3], ARGV[4]) >= tonumber(ARGV[5]) then return {4} end
end

local function entry(s)
  local sep = string.find(s, ':', 1, true)
  return tonumber(string.sub(s, 1, sep - 1)), tonumber(string.sub(s, sep + 1))
end

local rules = (#KEYS - 3) / 2
local totals, resets = {}, {}
local refused, longest = -1, -1
for i = 1, rules do
  local log, tot = KEYS[2 + 2 * i], KEYS[3 + 2 * i]
  local a = 6 + 3 * (i - 1)
  local limit, window, bucket = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local total = tonumber(redis.call('GET', tot) or '0')
  local front = nil
  -- Drop buckets that left the window, and old ones the rest outweigh.
  local dropped = 0
  while true do
    local f = redis.call('LINDEX', log, 0)
    if not f then
      -- Nothing left: the total is 0 whatever it said.
      redis.call('DEL', tot)
      total, dropped = 0, 0
      break
    end
    local b, c = entry(f)
    local leaves = (b + 1) * bucket + window
    if leaves <= now or total - c >= limit then
      redis.call('LPOP', log)
      total, dropped = total - c, dropped + c
    else
      front = leaves
      break
    end
  end
  -- DECRBY and INCR keep the key's expiry (SET would drop it).
  if dropped > 0 then redis.call('DECRBY', tot, dropped) end
  totals[i] = total
  if total >= limit then
    local wait = math.max(front - now, 1)
    if wait > longest then refused, longest = i, wait end
  else
    resets[i] = front and math.max(front - now, 1) or window
  end
end
if refused > 0 then return {1, refused - 1, longest} end

local out = {0, now}
for i = 1, rules do
  local log, tot = KEYS[2 + 2 * i], KEYS[3 + 2 * i]
  local a = 6 + 3 * (i - 1)
  local limit, window, bucket = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local b = math.floor(now / bucket)
  local last = redis.call('LINDEX', log, -1)
  local lb, lc = nil, 0
  if last then lb, lc = entry(last) end
  redis.call('INCR', tot)
  if lb and lb >= b then
    b = lb
    redis.call('LSET', log, -1, string.format('%d:%d', b, lc + 1))
  else
    -- A new newest bucket: both keys live until it has left the window (a
    -- count added to the same bucket later leaves with it, so needs no renewal).
    redis.call('RPUSH', log, string.format('%d:1', b))
    local ttl = window + 2 * bucket
    redis.call('PEXPIRE', log, ttl)
    redis.call('PEXPIRE', tot, ttl)
  end
  out[#out + 1] = b * bucket
  out[#out + 1] = limit - totals[i] - 1
  out[#out + 1] = resets[i]
end
return out
