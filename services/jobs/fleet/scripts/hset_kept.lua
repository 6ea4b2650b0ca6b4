-- Set fields of a record that still exists: an expired one is not made anew, without a TTL.
-- KEYS: job record
-- ARGV: field, value, ...
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
