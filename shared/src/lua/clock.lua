-- Redis' clock in milliseconds, one clock for every replica, read once per script: a second
-- TIME would cost a command and give the same instant but for microseconds.
local clock
local function now_ms()
  if not clock then
    local t = redis.call('TIME')
    clock = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return clock
end
