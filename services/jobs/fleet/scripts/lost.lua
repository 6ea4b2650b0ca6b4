-- Answer worker_lost for a job whose pod went silent (its proof of life expired). 1 declared.
-- KEYS: job record, running set, the pod's proof of life
-- ARGV: pod, result, http status, now, job id, ttl, prefix
-- touches also: <prefix>inflight:<key>
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
if redis.call('HGET', KEYS[1], 'state') ~= 'running' or redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then
  redis.call('SREM', KEYS[2], ARGV[5])
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'failed', 'result', ARGV[2], 'http_status', ARGV[3], 'finished', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('SREM', KEYS[2], ARGV[5])
redis.call('ZREM', ARGV[7] .. 'inflight:' .. (redis.call('HGET', KEYS[1], 'key') or '-'), ARGV[5])
return 1
