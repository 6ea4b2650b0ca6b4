-- A job's prompt left ComfyUI's queue: its record turns running under the pod, its ticket and
-- request go. 1 when it runs here (also when it did already), 0 when it is no longer queued.
-- KEYS: job record, running set, stream, tickets, body
-- ARGV: group, entry id, pod, now, job id
local state = redis.call('HGET', KEYS[1], 'state')
redis.call('XACK', KEYS[3], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[3], ARGV[2])
redis.call('HDEL', KEYS[4], ARGV[2])
redis.call('DEL', KEYS[5])
if state == 'running' and redis.call('HGET', KEYS[1], 'owner') == ARGV[3] then return 1 end
if state ~= 'queued' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'running', 'owner', ARGV[3], 'started', ARGV[4])
redis.call('SADD', KEYS[2], ARGV[5])
return 1
