-- Persist a job's pending webhook (its URL sealed to the worker's key) for a takeover.
-- KEYS: job record, webhooks set
-- ARGV: url, body, pod, job id
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'webhook_url', ARGV[1], 'webhook_body', ARGV[2], 'webhook_owner', ARGV[3],
  'webhook_state', 'pending', 'webhook_attempts', 0)
redis.call('SADD', KEYS[2], ARGV[4])
return 1
