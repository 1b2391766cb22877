-- Takes back admissions a later refusal served nothing for (see admit.lua).
-- KEYS: a (log, total) pair per rule; ARGV: the bucket each was counted in.
for i = 1, #ARGV do
  local log, tot = KEYS[2 * i - 1], KEYS[2 * i]
  local want = ARGV[i] .. ':'
  -- The bucket is among the newest unless the request took long.
  local tail = redis.call('LRANGE', log, -64, -1)
  for j = #tail, 1, -1 do
    local e = tail[j]
    if string.sub(e, 1, #want) == want then
      local c = tonumber(string.sub(e, #want + 1))
      if c <= 1 then
        redis.call('LREM', log, -1, e)
      else
        redis.call('LSET', log, j - #tail - 1, want .. string.format('%d', c - 1))
      end
      if tonumber(redis.call('GET', tot) or '0') > 0 then redis.call('DECR', tot) end
      break
    end
  end
end
return 0
