-- How long, in ms, the oldest ticket no pod has read yet has waited (by Redis's clock, from
-- its entry id); -1 when none waits. A pod with room only behind a running job reads a ticket
-- only once it waited a while: a pod with an idle ComfyUI takes it first.
-- KEYS: stream
-- ARGV: group
local last
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local fields = {}
  for i = 1, #group, 2 do fields[group[i]] = group[i + 1] end
  if fields['name'] == ARGV[1] then last = fields['last-delivered-id'] end
end
if not last then return -1 end
local next = redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', 1)
if #next == 0 then return -1 end
local now = redis.call('TIME')
local ms = tonumber(string.match(next[1][1], '^(%d+)'))
return tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - ms
