-- Take over a pending webhook whose pod went silent or let go of it. 1 when this pod sends it.
-- KEYS: job record, webhooks set
-- ARGV: pod, job id, prefix of the pods' proofs of life (<prefix>pod:)
local owner = redis.call('HGET', KEYS[1], 'webhook_owner')
if not owner then
  redis.call('SREM', KEYS[2], ARGV[2])
  return 0
end
if owner ~= '' and redis.call('EXISTS', ARGV[3] .. owner) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'webhook_owner', ARGV[1])
return 1
