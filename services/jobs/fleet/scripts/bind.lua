-- Bind a ticket to the job it runs: the job it ran before (a ticket taken over, or an entry a
-- pod before tickets wrote), else the head job of the key whose turn it is by the rule of
-- services.core.turns (the pool's too): the fewest jobs taken across the fleet, then the key
-- served least recently. Nothing (the ticket let go) when no job waits.
-- KEYS: stream, tickets, waiting (set of keys), served, turns
-- ARGV: group, entry id, now, in-flight score until, prefix, legacy job id
-- touches also: <prefix>job:<id>, <prefix>body:<id>, <prefix>waiting:<key>, <prefix>inflight:<key>
local p = ARGV[5]
local function let_go()
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[1], ARGV[2])
  redis.call('HDEL', KEYS[2], ARGV[2])
  return false
end
local function bound(job, key)
  redis.call('ZADD', p .. 'inflight:' .. key, ARGV[4], job)
  redis.call('EXPIREAT', p .. 'inflight:' .. key, math.ceil(tonumber(ARGV[4])))
  return {job, key, redis.call('HGET', p .. 'job:' .. job, 'traceparent') or '',
    redis.call('GET', p .. 'body:' .. job) or ''}
end
local job = redis.call('HGET', KEYS[2], ARGV[2])
if not job and ARGV[6] ~= '' then job = ARGV[6] end
if job then
  if redis.call('HGET', p .. 'job:' .. job, 'state') ~= 'queued' then return let_go() end
  return bound(job, redis.call('HGET', p .. 'job:' .. job, 'key') or '-')
end
while true do
  local served, flat = {}, redis.call('HGETALL', KEYS[4])
  for i = 1, #flat, 2 do served[flat[i]] = tonumber(flat[i + 1]) end
  local best, best_count, best_served
  for _, key in ipairs(redis.call('SMEMBERS', KEYS[3])) do
    local count = redis.call('ZCOUNT', p .. 'inflight:' .. key, ARGV[3], '+inf')
    local turn = served[key] or 0
    if not best or count < best_count or (count == best_count and turn < best_served) then
      best, best_count, best_served = key, count, turn
    end
  end
  if not best then return let_go() end
  job = redis.call('LPOP', p .. 'waiting:' .. best)
  if not job or redis.call('LLEN', p .. 'waiting:' .. best) == 0 then redis.call('SREM', KEYS[3], best) end
  if job and redis.call('HGET', p .. 'job:' .. job, 'state') == 'queued' then
    redis.call('ZREMRANGEBYSCORE', p .. 'inflight:' .. best, '-inf', ARGV[3])
    redis.call('HSET', KEYS[2], ARGV[2], job)
    redis.call('HSET', KEYS[4], best, redis.call('INCR', KEYS[5]))
    return bound(job, best)
  end
end
