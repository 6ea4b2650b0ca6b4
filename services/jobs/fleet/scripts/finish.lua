-- Write a job's outcome. 1 written; 0 answered elsewhere meanwhile (that stays its outcome);
-- -1 its record is gone and it had not started (a record Redis lost is written again only for
-- a started job, with its key).
-- KEYS: job record, running set, stream, tickets, body
-- ARGV: pod, state, result, http status, now, ttl, job id, group, entry id, prefix, key or ''
-- touches also: <prefix>inflight:<key>
local state = redis.call('HGET', KEYS[1], 'state')
redis.call('XACK', KEYS[3], ARGV[8], ARGV[9])
redis.call('XDEL', KEYS[3], ARGV[9])
redis.call('HDEL', KEYS[4], ARGV[9])
redis.call('DEL', KEYS[5])
if not state then
  if ARGV[11] == '' then return -1 end
  redis.call('HSET', KEYS[1], 'key', ARGV[11], 'created', ARGV[5])
elseif state ~= 'queued' and not (state == 'running' and redis.call('HGET', KEYS[1], 'owner') == ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'result', ARGV[3], 'http_status', ARGV[4],
  'finished', ARGV[5], 'owner', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('SREM', KEYS[2], ARGV[7])
redis.call('ZREM', ARGV[10] .. 'inflight:' .. (redis.call('HGET', KEYS[1], 'key') or '-'), ARGV[7])
return 1
