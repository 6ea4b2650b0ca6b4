-- Claim again the entries a pod holds and has not started (their idle time restarts), so no
-- other pod takes them over; an entry handed back or taken over meanwhile is left. How many.
-- KEYS: stream
-- ARGV: group, consumer (the pod), entry id...
local kept = 0
for i = 3, #ARGV do
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if pending[1] and pending[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    kept = kept + 1
  end
end
return kept
