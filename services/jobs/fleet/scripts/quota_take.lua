-- Take one of a key's job slots, dropping first the slots whose job ended or whose pod process
-- no longer shows it lives. 1 taken, 0 all taken.
-- KEYS: the key's slots (<prefix>quota:slots:<key>, slot -> pod process)
-- ARGV: the key's max jobs, slot, holder, prefix
-- touches also: <prefix>job:<slot>, <prefix>pod:<holder>
local p, held = ARGV[4], 0
local flat = redis.call('HGETALL', KEYS[1])
for i = 1, #flat, 2 do
  local state = redis.call('HGET', p .. 'job:' .. flat[i], 'state')
  local lives
  if state then lives = state == 'queued' or state == 'running'
  else lives = redis.call('EXISTS', p .. 'pod:' .. flat[i + 1]) == 1 end
  if lives then held = held + 1 else redis.call('HDEL', KEYS[1], flat[i]) end
end
if held >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
return 1
