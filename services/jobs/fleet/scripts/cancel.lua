-- Cancel a job: one still queued ends now (out of its key's line, its request gone); a running
-- one gets its cancel flag, which its pod reads. Returns the state it had.
-- KEYS: job record
-- ARGV: result, http status, now, ttl, prefix, job id
-- touches also: <prefix>waiting:<key>, <prefix>inflight:<key>, <prefix>body:<id>
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'queued' then
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'result', ARGV[1], 'http_status', ARGV[2],
    'finished', ARGV[3], 'cancel', '1')
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  local key = redis.call('HGET', KEYS[1], 'key') or '-'
  redis.call('LREM', ARGV[5] .. 'waiting:' .. key, 0, ARGV[6])
  redis.call('ZREM', ARGV[5] .. 'inflight:' .. key, ARGV[6])
  redis.call('DEL', ARGV[5] .. 'body:' .. ARGV[6])
elseif state == 'running' then
  redis.call('HSET', KEYS[1], 'cancel', '1')
end
return state
