-- The interval in milliseconds may follow the file on the lua-load line.
local interval = tonumber((...)) or 10000

local function log_work()
    while true do
        core.Debug("Doing some task work!\n")
        core.msleep(interval)
    end
end

core.register_task(log_work)
