-- The admission of one or more requests for every instance on this Redis (S1),
-- each atomic and in the order given: money, token quota, then every rate rule
-- (filters/src/rolling.rs, the same algorithm); a request is counted in each rule
-- only when everything passes. Redis's clock is every instance's clock. Several
-- requests in one call are the same as one call each, in order: an instance sends
-- the requests that arrived while its previous call was out together.
--
-- Per request, KEYS: balance, spend, tokens, then a (log, total) pair per rule. A
--       log is a list of "bucket:count", oldest first; the total is their sum.
-- ARGV: the number of requests; per request: its number of rules, balance seed
--       ('' = not metered), spend seed, budget ('' = none), tokens seed, quota
--       ('' = none), spend ttl ms, then limit, window ms, bucket ms per rule.
--       Money in nano-units.
-- Reply: per request its length, then {0, now, at, left, reset_ms, ...per rule}
--        | {1, rule, wait_ms} | {2, balance} | {3} | {4}
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

local function entry(s)
  local sep = string.find(s, ':', 1, true)
  return tonumber(string.sub(s, 1, sep - 1)), tonumber(string.sub(s, sep + 1))
end

-- One request whose keys start after KEYS[k] and arguments after ARGV[a].
local function admit(k, a, rules)
  if ARGV[a + 1] ~= '' then
    local balance = figure(KEYS[k + 1], ARGV[a + 1])
    if balance <= 0 then return {2, balance} end
  end
  if ARGV[a + 3] ~= '' then
    if figure(KEYS[k + 2], ARGV[a + 2], tonumber(ARGV[a + 6])) >= tonumber(ARGV[a + 3]) then
      return {3}
    end
  end
  if ARGV[a + 5] ~= '' then
    if figure(KEYS[k + 3], ARGV[a + 4]) >= tonumber(ARGV[a + 5]) then return {4} end
  end

  local totals, resets, windows = {}, {}, {}
  local refused, longest = -1, -1
  for i = 1, rules do
    local log, tot = KEYS[k + 2 + 2 * i], KEYS[k + 3 + 2 * i]
    local r = a + 6 + 3 * (i - 1)
    local limit, window, bucket = tonumber(ARGV[r + 1]), tonumber(ARGV[r + 2]), tonumber(ARGV[r + 3])
    windows[i] = {limit, window, bucket}
    local total = tonumber(redis.call('GET', tot) or '-1')
    if total < 0 then
      -- No total: a new log, or one whose total was evicted without it
      -- (maxmemory): counted again from the log, expiring with it.
      total = 0
      for _, e in ipairs(redis.call('LRANGE', log, 0, -1)) do
        local _, c = entry(e)
        total = total + c
      end
      local ttl = redis.call('PTTL', log)
      if total > 0 and ttl > 0 then redis.call('SET', tot, total, 'PX', ttl) end
    end
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
    local log, tot = KEYS[k + 2 + 2 * i], KEYS[k + 3 + 2 * i]
    local limit, window, bucket = windows[i][1], windows[i][2], windows[i][3]
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
end

local out = {}
local k, a = 0, 1
for _ = 1, tonumber(ARGV[1]) do
  local rules = tonumber(ARGV[a + 1])
  local reply = admit(k, a + 1, rules)
  out[#out + 1] = #reply
  for _, v in ipairs(reply) do out[#out + 1] = v end
  k = k + 3 + 2 * rules
  a = a + 7 + 3 * rules
end
return out
