-- Redis' clock, one clock for every replica, read once per script: a second TIME would cost a
-- command and give the same instant but for microseconds. now_us() in microseconds, now_ms()
-- in milliseconds.
local clock_us
local function now_us()
  if not clock_us then
    local t = redis.call('TIME')
    clock_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  end
  return clock_us
end
local function now_ms() return math.floor(now_us() / 1000) end
