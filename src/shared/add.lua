-- Adds deltas to shared figures (see admit.lua): a served request's cost (balance
-- down, spend up) and tokens, a top-up, or charges kept while Redis was away. A
-- figure not seeded yet is left alone: it is seeded from the stores, which count
-- the same change.
-- KEYS: the figures; ARGV: their deltas (money in nano-units).
for i = 1, #KEYS do
  if ARGV[i] ~= '0' and redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('INCRBY', KEYS[i], ARGV[i])
  end
end
return 0
