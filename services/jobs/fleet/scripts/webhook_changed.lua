-- A delivery's new state; an ended one forgets its URL and body. The record keeps its TTL.
-- KEYS: job record, webhooks set
-- ARGV: state, attempts, last HTTP status or '', job id
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[2], ARGV[4])
  return 0
end
redis.call('HSET', KEYS[1], 'webhook_state', ARGV[1], 'webhook_attempts', ARGV[2],
  'webhook_last_status', ARGV[3])
if ARGV[1] ~= 'pending' then
  redis.call('HDEL', KEYS[1], 'webhook_url', 'webhook_body', 'webhook_owner')
  redis.call('SREM', KEYS[2], ARGV[4])
end
return 1
