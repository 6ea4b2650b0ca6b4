-- A started job that did not run to its end here goes back first in its key's line, as it was
-- sent, with a new ticket. 0 when it is not running under this pod.
-- KEYS: job record, running set, stream
-- ARGV: pod, job id, body, prefix
-- touches also: <prefix>body:<id>, <prefix>waiting:<key>, <prefix>waiting, <prefix>inflight:<key>
if redis.call('HGET', KEYS[1], 'state') ~= 'running' or redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'queued')
redis.call('HDEL', KEYS[1], 'owner', 'started', 'progress')
redis.call('SREM', KEYS[2], ARGV[2])
local key = redis.call('HGET', KEYS[1], 'key') or '-'
redis.call('SET', ARGV[4] .. 'body:' .. ARGV[2], ARGV[3])
redis.call('LPUSH', ARGV[4] .. 'waiting:' .. key, ARGV[2])
redis.call('SADD', ARGV[4] .. 'waiting', key)
redis.call('ZREM', ARGV[4] .. 'inflight:' .. key, ARGV[2])
redis.call('XADD', KEYS[3], '*', 'ticket', '1')
return 1
