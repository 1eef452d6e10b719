-- HAProxy's Lua API, written in Lua over the primitives of `__mb` (provided
-- by the Lua guest, guests/lua). Scripts see `core`, `act`, and the TXN,
-- HTTP, AppletHTTP, AppletTCP, Socket, Proxy, Server, Map and Concat
-- objects as HAProxy gives them.

local mb = __mb

---------------------------------------------------------------------------
-- core

core = {
    emerg = 0, alert = 1, crit = 2, err = 3,
    warning = 4, notice = 5, info = 6, debug = 7,
    thread = mb.thread,
}

act = {
    CONTINUE = 0, STOP = 1, YIELD = 2, ERROR = 3,
    DONE = 4, DENY = 5, ABORT = 6, INVALID = 7,
}
function act:wake_time(_) end

local inits = {}
local task_count = 0

local function need_body(what)
    if not mb.loading() then
        error(what .. ": registering is only possible while the script loads", 3)
    end
end

function core.register_fetches(name, fn)
    need_body("register_fetches")
    -- The TXN object is made inside the call, saving a call from the host.
    mb.register("fetch", name, function(...) return fn(mb.new_txn("fetch"), ...) end)
end

function core.register_converters(name, fn)
    need_body("register_converters")
    mb.register("converter", name, fn)
end

function core.register_action(name, actions, fn, nargs)
    need_body("register_action")
    mb.register("action", name, function(...) return fn(mb.new_txn("action"), ...) end,
        actions, nargs or 0)
end

function core.register_service(name, mode, fn)
    need_body("register_service")
    -- The applet is made, and an unstarted response started, inside the
    -- call.
    mb.register("service", name, function(req_id)
        local applet = mb.new_applet(mode, req_id)
        fn(applet)
        mb.applet_finish(applet)
    end, mode)
end

-- moonbox has no stats socket: a CLI command is accepted and said to be
-- unreachable, so that scripts that also add one still load.
function core.register_cli(words, _usage, _fn)
    need_body("core.register_cli")
    local w = type(words) == "table" and table.concat(words, " ") or tostring(words)
    mb.log(core.warning, "core.register_cli('" .. w .. "'): moonbox has no stats socket; the command is not available")
end

function core.register_init(fn)
    need_body("register_init")
    inits[#inits + 1] = fn
end

function core.register_task(fn, ...)
    task_count = task_count + 1
    local args = table.pack(...)
    local run = function() return fn(table.unpack(args, 1, args.n)) end
    if mb.loading() then
        mb.register("task", "task" .. task_count, run)
    else
        error("register_task: tasks can only be registered while the script loads", 2)
    end
end

function mb.has_inits() return #inits > 0 end
function mb.run_inits()
    for _, fn in ipairs(inits) do fn() end
end

function core.log(level, msg) mb.log(level, tostring(msg)) end
function core.Debug(msg) mb.log(core.debug, tostring(msg)) end
function core.Info(msg) mb.log(core.info, tostring(msg)) end
function core.Warning(msg) mb.log(core.warning, tostring(msg)) end
function core.Alert(msg) mb.log(core.alert, tostring(msg)) end

function core.msleep(ms) mb.sleep_ms(math.floor(ms)) end
function core.sleep(s) mb.sleep_ms(math.floor(s * 1000)) end
function core.yield() mb.yield() end
-- Nothing wakes a waiting task early here: core.wait(ms) sleeps, and
-- without a delay gives the scheduler a turn.
function core.wait(ms)
    if ms == nil then mb.yield() else mb.sleep_ms(math.floor(ms)) end
end
function core.set_nice(_) end

function core.now()
    local sec, usec = mb.now()
    return { sec = sec, usec = usec }
end

function core.get_var(name) return mb.get_var(name) end
function core.set_var(name, value) mb.set_var(name, value) end
function core.unset_var(name) mb.unset_var(name) end

function core.done() error("\1moonbox:core-done", 0) end

function core.set_map(file, key, value) mb.map_set(file, key, value) end
function core.del_map(file, key) mb.map_del(file, key) end

function core.tokenize(str, separators, noblank)
    local out = {}
    local pattern = "([^" .. separators:gsub("%p", "%%%0") .. "]*)"
    for tok in (str .. separators:sub(1, 1)):gmatch(pattern .. "[" .. separators:gsub("%p", "%%%0") .. "]") do
        if not (noblank and tok == "") then out[#out + 1] = tok end
    end
    return out
end

---------------------------------------------------------------------------
-- Files: readable while the scripts load, under their folders only (the
-- host enforces it). io.popen and os.execute fail (no processes).

local MemFile = {}
MemFile.__index = MemFile
function MemFile:read(fmt)
    fmt = fmt or "l"
    if type(fmt) == "string" then fmt = fmt:gsub("^%*", "") end
    if self.pos > #self.data then
        if fmt == "a" then return "" end
        return nil
    end
    if fmt == "a" then
        local s = self.data:sub(self.pos)
        self.pos = #self.data + 1
        return s
    elseif fmt == "l" or fmt == "L" then
        local nl = self.data:find("\n", self.pos, true)
        local stop = nl or #self.data
        local line = self.data:sub(self.pos, fmt == "L" and stop or (nl and nl - 1 or stop))
        self.pos = stop + 1
        return line
    elseif type(fmt) == "number" then
        local s = self.data:sub(self.pos, self.pos + fmt - 1)
        self.pos = self.pos + fmt
        return s
    end
    error("bad read format '" .. tostring(fmt) .. "'", 2)
end
function MemFile:lines(fmt) return function() return self:read(fmt) end end
function MemFile:close() return true end
function MemFile:seek(whence, off)
    whence, off = whence or "cur", off or 0
    if whence == "set" then self.pos = off + 1
    elseif whence == "end" then self.pos = #self.data + off + 1
    else self.pos = self.pos + off end
    return self.pos - 1
end

local function read_whole(path)
    local data, err = mb.read_file(path)
    if data == nil then return nil, err end
    return data
end

io.open = function(path, mode)
    mode = mode or "r"
    if not mode:match("^r") then
        return nil, path .. ": files are read-only for scripts", 13
    end
    local data, err = read_whole(path)
    if data == nil then return nil, err, 2 end
    return setmetatable({ data = data, pos = 1 }, MemFile)
end
io.lines = function(path, fmt)
    local f, err = io.open(path)
    if not f then error(err, 2) end
    return f:lines(fmt)
end
io.popen = function() return nil, "io.popen is not available: scripts cannot start processes" end
os.execute = function() return nil, "exit", 1 end
os.exit = function() error("os.exit is not available to scripts", 2) end
os.remove = function(p) return nil, p .. ": files are read-only for scripts" end
os.rename = function(p) return nil, p .. ": files are read-only for scripts" end
os.tmpname = function() error("os.tmpname is not available to scripts", 2) end

loadfile = function(path, mode, env)
    local data, err = read_whole(path)
    if data == nil then return nil, err end
    return load(data, "@" .. path, mode, env)
end
dofile = function(path)
    local f, err = loadfile(path)
    if not f then error(err, 2) end
    return f()
end

-- `require` finds Lua modules through package.path, read with the host.
package.searchers[2] = function(name)
    local tried = {}
    local file = name:gsub("%.", "/")
    for template in package.path:gmatch("[^;]+") do
        local path = template:gsub("%?", file)
        local data = mb.read_file(path)
        if data then
            local f, err = load(data, "@" .. path)
            if not f then error(err, 2) end
            return f, path
        end
        tried[#tried + 1] = "\n\tno file '" .. path .. "'"
    end
    return table.concat(tried)
end
package.searchers[3] = nil
package.searchers[4] = nil

---------------------------------------------------------------------------
-- Addresses: core.parse_addr, core.match_addr

local function parse_ipv4(s)
    local a, b, c, d = s:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
    if not a then return nil end
    local bytes = { tonumber(a), tonumber(b), tonumber(c), tonumber(d) }
    for _, x in ipairs(bytes) do if x > 255 then return nil end end
    return bytes
end

local function parse_ipv6(s)
    local head, tail = s, nil
    local dc = s:find("::", 1, true)
    if dc then head, tail = s:sub(1, dc - 1), s:sub(dc + 2) end
    local function groups(part)
        local out = {}
        if part == "" then return out end
        for g in (part .. ":"):gmatch("([^:]*):") do
            if not g:match("^%x%x?%x?%x?$") then return nil end
            out[#out + 1] = tonumber(g, 16)
        end
        return out
    end
    local h, t = groups(head), groups(tail or "")
    if not h or not t then return nil end
    local missing = 8 - #h - #t
    if (dc and missing < 1) or (not dc and missing ~= 0) then return nil end
    local all = {}
    for _, g in ipairs(h) do all[#all + 1] = g end
    for _ = 1, missing do all[#all + 1] = 0 end
    for _, g in ipairs(t) do all[#all + 1] = g end
    local bytes = {}
    for _, g in ipairs(all) do
        bytes[#bytes + 1] = g // 256
        bytes[#bytes + 1] = g % 256
    end
    return bytes
end

--- Parses "IP[/MASK]" (IPv4 or IPv6) into a network, or nil.
function core.parse_addr(addr)
    if type(addr) ~= "string" then return nil end
    local ip, mask = addr:match("^([^/]+)/(%d+)$")
    ip = ip or addr
    local bytes = parse_ipv4(ip)
    local bits = 32
    if not bytes then
        bytes = parse_ipv6(ip)
        bits = 128
    end
    if not bytes then return nil end
    mask = tonumber(mask) or bits
    if mask > bits then return nil end
    return { bytes = bytes, mask = mask, family = bits == 32 and 4 or 6 }
end

--- Whether two networks match: the shorter mask decides.
function core.match_addr(a, b)
    if type(a) == "string" then a = core.parse_addr(a) end
    if type(b) == "string" then b = core.parse_addr(b) end
    if not a or not b or a.family ~= b.family then return false end
    local mask = math.min(a.mask, b.mask)
    for i = 1, #a.bytes do
        local bits = math.max(0, math.min(8, mask - (i - 1) * 8))
        if bits == 0 then break end
        local keep = 256 - 2 ^ (8 - bits)
        if (a.bytes[i] & keep) ~= (b.bytes[i] & keep) then return false end
    end
    return true
end

---------------------------------------------------------------------------
-- HTTP dates: core.http_date, core.imf_date, core.rfc850_date,
-- core.asctime_date return seconds since the epoch, or nil.

local months = { Jan = 1, Feb = 2, Mar = 3, Apr = 4, May = 5, Jun = 6,
                 Jul = 7, Aug = 8, Sep = 9, Oct = 10, Nov = 11, Dec = 12 }

local function epoch(y, mon, d, h, mi, s)
    local m = months[mon]
    if not m then return nil end
    y, d, h, mi, s = tonumber(y), tonumber(d), tonumber(h), tonumber(mi), tonumber(s)
    if d < 1 or d > 31 or h > 23 or mi > 59 or s > 60 then return nil end
    -- Days from civil (proleptic Gregorian).
    local yy = m <= 2 and y - 1 or y
    local era = (yy >= 0 and yy or yy - 399) // 400
    local yoe = yy - era * 400
    local mp = (m + 9) % 12
    local doy = (153 * mp + 2) // 5 + d - 1
    local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    local days = era * 146097 + doe - 719468
    return math.tointeger(days * 86400 + h * 3600 + mi * 60 + s)
end

function core.imf_date(s)
    local _, d, mon, y, h, mi, sec = s:match("^(%a%a%a), (%d%d) (%a%a%a) (%d%d%d%d) (%d%d):(%d%d):(%d%d) GMT$")
    if not d then return nil end
    return epoch(y, mon, d, h, mi, sec)
end

function core.rfc850_date(s)
    local d, mon, y, h, mi, sec = s:match("^%a+, (%d%d)%-(%a%a%a)%-(%d%d) (%d%d):(%d%d):(%d%d) GMT$")
    if not d then return nil end
    y = tonumber(y)
    y = y < 70 and 2000 + y or 1900 + y
    return epoch(y, mon, d, h, mi, sec)
end

function core.asctime_date(s)
    local mon, d, h, mi, sec, y = s:match("^%a%a%a (%a%a%a) +(%d%d?) (%d%d):(%d%d):(%d%d) (%d%d%d%d)$")
    if not mon then return nil end
    return epoch(y, mon, d, h, mi, sec)
end

function core.http_date(s)
    if type(s) ~= "string" then return nil end
    return core.imf_date(s) or core.rfc850_date(s) or core.asctime_date(s)
end

---------------------------------------------------------------------------
-- Queue (core.queue)

local Queue = {}
Queue.__index = Queue
function core.queue() return setmetatable({ items = {}, first = 1, last = 0 }, Queue) end
function Queue:size() return self.last - self.first + 1 end
function Queue:push(v)
    if v == nil then return false end
    self.last = self.last + 1
    self.items[self.last] = v
    return true
end
function Queue:pop()
    if self.first > self.last then return nil end
    local v = self.items[self.first]
    self.items[self.first] = nil
    self.first = self.first + 1
    return v
end
--- Waits (yielding to the proxy) until an item is there.
function Queue:pop_wait()
    while self.first > self.last do core.msleep(1) end
    return self:pop()
end
function Queue:alarm() end

-- "show info", from what the proxy counts: connections and requests summed
-- over the frontends, uptime since the scripts loaded (at start-up).
local loaded_ms = mb.monotonic_ms()
function core.get_info()
    local cur, cum, req = 0, 0, 0
    for _, fe in pairs(core.frontends) do
        local st = fe:get_stats()
        cur = cur + (tonumber(st.scur) or 0)
        cum = cum + (tonumber(st.stot) or 0)
        req = req + (tonumber(st.req_tot) or 0)
    end
    local up = (mb.monotonic_ms() - loaded_ms) // 1000
    return {
        Name = "moonbox", Nbproc = 1, Process_num = 1, Nbthread = mb.nbthread,
        Uptime_sec = up,
        Uptime = string.format("%dd %dh%02dm%02ds", up // 86400, up // 3600 % 24, up // 60 % 60, up % 60),
        CurrConns = cur, CumConns = cum, CumReq = req,
    }
end

---------------------------------------------------------------------------
-- Concat

local Concat = {}
Concat.__index = Concat
function Concat:add(s) self.parts[#self.parts + 1] = tostring(s) end
function Concat:dump() return table.concat(self.parts) end
function core.concat() return setmetatable({ parts = {} }, Concat) end

---------------------------------------------------------------------------
-- Proxies and servers

local Server = {}
Server.__index = Server
function Server:get_name() return self.name end
function Server:get_puid() return self.puid end
function Server:get_addr() return self.addr end
function Server:get_weight() return self.weight end
function Server:get_stats() return mb.server_stats(self.proxy, self.name) or {} end
function Server:is_backup() return self.backup end
function Server:is_draining() return self.weight == 0 end
function Server:set_maint() mb.server_admin(self.proxy, self.name, "maint") end
function Server:set_ready() mb.server_admin(self.proxy, self.name, "ready") end
function Server:set_drain() mb.server_admin(self.proxy, self.name, "drain") end
function Server:set_weight(w) mb.server_weight(self.proxy, self.name, tonumber(w)) end
function Server:get_rid() return 0 end
function Server:is_dynamic() return false end
function Server:get_proxy() return core.proxies[self.proxy] end
local function stat(s, col) return tonumber((s:get_stats() or {})[col]) or 0 end
function Server:get_cur_sess() return stat(self, "scur") end
function Server:get_pend_conn() return stat(self, "qcur") end
function Server:get_maxconn() return stat(self, "slim") end
function Server:set_maxconn(n) mb.server_maxconn(self.proxy, self.name, math.floor(tonumber(n))) end
function Server:check_force_up() mb.server_admin(self.proxy, self.name, "up") end
function Server:check_force_down() mb.server_admin(self.proxy, self.name, "down") end
function Server:check_force_nolb() mb.server_admin(self.proxy, self.name, "drain") end
Server.agent_force_up = Server.check_force_up
Server.agent_force_down = Server.check_force_down
function Server:tracking() return nil end
function Server:get_trackers() return {} end

local Proxy = {}
Proxy.__index = Proxy
function Proxy:get_name() return self.name end
function Proxy:get_uuid() return self.uuid end
function Proxy:get_mode() return self.mode end
function Proxy:get_stats() return mb.proxy_stats(self.name) or {} end
function Proxy:get_cap()
    if self.frontend and self.backend then return "frontend,backend" end
    return self.frontend and "frontend" or "backend"
end
local function count_servers(p, backup)
    local n = 0
    for _, s in pairs(p.servers) do
        local st = s:get_stats().status or ""
        if s.backup == backup and (st == "UP" or st == "no check") then n = n + 1 end
    end
    return n
end
function Proxy:get_srv_act() return count_servers(self, false) end
function Proxy:get_srv_bck() return count_servers(self, true) end

local function proxies(filter)
    local out = {}
    for _, p in ipairs(mb.proxies()) do
        if filter == nil or p[filter] then
            local servers = {}
            for _, s in ipairs(p.servers) do
                s.proxy = p.name
                servers[s.name] = setmetatable(s, Server)
            end
            p.servers = servers
            -- moonbox has no stick tables nor listener objects yet.
            p.listeners = {}
            out[p.name] = setmetatable(p, Proxy)
        end
    end
    return out
end

setmetatable(core, {
    __index = function(_, k)
        if k == "proxies" then return proxies(nil) end
        if k == "backends" then return proxies("backend") end
        if k == "frontends" then return proxies("frontend") end
    end,
})

---------------------------------------------------------------------------
-- Map

Map = { _str = "str", _beg = "beg", _end = "end", _sub = "sub", _reg = "reg",
        _dom = "dom", _dir = "dir", _int = "int", _ip = "ip", _len = "len",
        _found = "found", _bool = "bool" }
Map.str, Map.beg, Map["end"], Map.sub, Map.reg = "str", "beg", "end", "sub", "reg"
Map.dom, Map.dir, Map.int, Map.ip = "dom", "dir", "int", "ip"
local MapObj = {}
MapObj.__index = MapObj
-- Loads the file unless the configuration already did, as HAProxy does.
function Map.new(file, method)
    file = tostring(file)
    mb.map_load(file)
    return setmetatable({ file = file, method = method or "str" }, MapObj)
end
function MapObj:lookup(key) return mb.map_lookup(self.file, self.method, tostring(key)) end
function MapObj:slookup(key) return self:lookup(key) or "" end

---------------------------------------------------------------------------
-- Regex (compiled by the proxy)

Regex = {}
local RegexObj = {}
RegexObj.__index = RegexObj
--- Regex.new(pattern, case_sensitive): case_sensitive defaults to true.
function Regex.new(pattern, case_sensitive)
    local r = setmetatable({ pattern = pattern, nocase = case_sensitive == false }, RegexObj)
    mb.regex(pattern, r.nocase, "")  -- fails now on a bad pattern
    return r
end
--- Whether `str` matches.
function RegexObj:exec(str) return mb.regex(self.pattern, self.nocase, tostring(str)) ~= false end
--- Whether `str` matches, and the whole match and groups.
function RegexObj:match(str)
    local groups = mb.regex(self.pattern, self.nocase, tostring(str))
    if groups == false then return false, {} end
    return true, groups
end

---------------------------------------------------------------------------
-- Fetches and converters: txn.f, txn.sf, txn.c, txn.sc. Names take `_`
-- for `.` (req.hdr -> req_hdr), as in HAProxy.

local function rename_table(names)
    local t = {}
    for _, n in ipairs(names) do t[(n:gsub("[%.%-%+]", "_"))] = n end
    return t
end
local fetch_names = rename_table(mb.fetch_names())
local conv_names = rename_table(mb.converter_names())

-- As in HAProxy, the functions are in the `__index` table of the object's
-- metatable, where scripts may enumerate them.
local function sample_class(names, call, stringify)
    local methods = {}
    for key, name in pairs(names) do
        if stringify then
            methods[key] = function(_, ...)
                local v = call(name, ...)
                if v == nil then return "" end
                -- A boolean sample reads "1" or "0" as a string.
                if v == true then return "1" elseif v == false then return "0" end
                return tostring(v)
            end
        else
            methods[key] = function(_, ...) return call(name, ...) end
        end
    end
    return setmetatable({}, { __index = methods })
end

local Fetches = sample_class(fetch_names, mb.fetch, false)
local SFetches = sample_class(fetch_names, mb.fetch, true)
local Converters = sample_class(conv_names, mb.convert, false)
local SConverters = sample_class(conv_names, mb.convert, true)

---------------------------------------------------------------------------
-- HTTP

local HTTP = {}
HTTP.__index = HTTP

local function header_table(list)
    local t = {}
    for _, pair in ipairs(list) do
        local name = pair[1]:lower()
        local vals = t[name]
        if vals == nil then
            vals = {}
            t[name] = vals
            vals[0] = pair[2]
        else
            vals[#vals + 1] = pair[2]
        end
    end
    return t
end

function HTTP:req_get_headers() return header_table(mb.req_headers()) end
function HTTP:res_get_headers() return header_table(mb.res_headers()) end
function HTTP:req_add_header(n, v) mb.edit_header(false, "add", n, tostring(v)) end
function HTTP:req_set_header(n, v) mb.edit_header(false, "set", n, tostring(v)) end
function HTTP:req_del_header(n) mb.edit_header(false, "del", n) end
function HTTP:res_add_header(n, v) mb.edit_header(true, "add", n, tostring(v)) end
function HTTP:res_set_header(n, v) mb.edit_header(true, "set", n, tostring(v)) end
function HTTP:res_del_header(n) mb.edit_header(true, "del", n) end
function HTTP:req_rep_header(n, re, rep) mb.rep_header(false, n, re, rep) end
function HTTP:res_rep_header(n, re, rep) mb.rep_header(true, n, re, rep) end
HTTP.req_rep_value = HTTP.req_rep_header
HTTP.res_rep_value = HTTP.res_rep_header
function HTTP:req_set_method(m) mb.set_req_line("method", m) end
function HTTP:req_set_path(p) mb.set_req_line("path", p) end
function HTTP:req_set_query(q) mb.set_req_line("query", q) end
function HTTP:req_set_uri(u) mb.set_req_line("uri", u) end
function HTTP:res_set_status(code, reason) mb.set_status(code, reason) end

---------------------------------------------------------------------------
-- Reply

local Reply = {}
Reply.__index = Reply
function Reply:set_status(status, reason) self.status, self.reason = status, reason end
function Reply:add_header(name, value)
    local h = self.headers[name]
    if h == nil then h = {}; self.headers[name] = h end
    h[#h + 1] = tostring(value)
end
function Reply:del_header(name) self.headers[name] = nil end
function Reply:set_body(body) self.body = body end

---------------------------------------------------------------------------
-- TXN

local privs = {}
local privs_count = 0

local TXN = {}
TXN.__index = TXN

function TXN:get_var(name) return mb.get_var(name) end
function TXN:set_var(name, value, _ifexist) mb.set_var(name, value) end
function TXN:unset_var(name) mb.unset_var(name) end
function TXN:get_priv() return privs[mb.txn_id()] end
function TXN:set_priv(v)
    local id = mb.txn_id()
    if privs[id] == nil then
        privs_count = privs_count + 1
        -- Transactions end without telling the script: forget old ones.
        if privs_count > 10000 then privs, privs_count = {}, 1 end
    end
    privs[id] = v
end
function TXN:log(level, msg) mb.log(level, tostring(msg)) end
function TXN:Debug(msg) mb.log(core.debug, tostring(msg)) end
function TXN:Info(msg) mb.log(core.info, tostring(msg)) end
function TXN:Warning(msg) mb.log(core.warning, tostring(msg)) end
function TXN:Alert(msg) mb.log(core.alert, tostring(msg)) end
function TXN:reply(t)
    local r = setmetatable({ status = 200, headers = {}, body = "" }, Reply)
    if t then
        r.status = t.status or r.status
        r.reason = t.reason
        r.body = t.body or ""
        for n, v in pairs(t.headers or {}) do
            if type(v) == "table" then for _, x in ipairs(v) do r:add_header(n, x) end
            else r:add_header(n, v) end
        end
    end
    return r
end
function TXN:done(reply) mb.done(reply) end
function TXN:deflog(msg) mb.log(core.info, tostring(msg)) end
-- Per-transaction log levels, IP TOS and marks, and queue priorities are
-- not applied by moonbox; scripts that set them go on.
function TXN:set_loglevel(_) end
function TXN:set_tos(_) end
function TXN:set_mark(_) end
TXN.set_fc_tos = TXN.set_tos
TXN.set_fc_mark = TXN.set_mark
function TXN:set_priority_class(_) end
function TXN:set_priority_offset(_) end
function TXN:get_headers() return header_table(mb.req_headers()) end

---------------------------------------------------------------------------
-- Channel (txn.req, txn.res): the bytes waiting in TCP mode. Offsets are
-- 0-based, as in HAProxy; a length of -1 (the default) means all.

local Channel = {}
Channel.__index = Channel

local function tcp_only(self, what)
    if mb.is_http() then
        error("Channel:" .. what .. "(): not allowed in HTTP mode", 3)
    end
    return mb.channel_data(self._res)
end

local function span(data, off, len)
    off = math.max(0, math.floor(off or 0))
    len = len or -1
    local last = (len < 0) and #data or math.min(#data, off + math.floor(len))
    return off, last
end

function Channel:data(off, len)
    local data = tcp_only(self, "data")
    if #data == 0 then return nil end
    local first, last = span(data, off, len)
    return data:sub(first + 1, last)
end
function Channel:line(off, len)
    local data = tcp_only(self, "line")
    if #data == 0 then return nil end
    local first, last = span(data, off, len)
    local chunk = data:sub(first + 1, last)
    local nl = chunk:find("\n", 1, true)
    return nl and chunk:sub(1, nl) or chunk
end
-- Replaces bytes [first, last) of the waiting data with `str`.
local function splice(self, what, str, off, len, at_end)
    local data = tcp_only(self, what)
    str = tostring(str)
    local first, last
    if at_end then first, last = #data, #data else first, last = span(data, off, len) end
    mb.channel_set(self._res, data:sub(1, first) .. str .. data:sub(last + 1))
    return #str, last - first
end

function Channel:set(str, off, len) return (splice(self, "set", str, off, len)) end
function Channel:remove(off, len) return select(2, splice(self, "remove", "", off, len)) end
function Channel:append(str) return (splice(self, "append", str, nil, nil, true)) end
function Channel:prepend(str) return (splice(self, "prepend", str, 0, 0)) end
function Channel:insert(str, off) return (splice(self, "insert", str, off, 0)) end
function Channel:send(str)
    tcp_only(self, "send")
    str = tostring(str)
    mb.channel_send(self._res, str)
    return #str
end
-- Forwarding sends the first bytes on at once, ahead of the rest.
function Channel:forward(n)
    local data = tcp_only(self, "forward")
    n = math.min(#data, math.max(0, math.floor(n or #data)))
    mb.channel_send(self._res, data:sub(1, n))
    mb.channel_set(self._res, data:sub(n + 1))
    return n
end
function Channel:input()
    if mb.is_http() then return 0 end
    return #mb.channel_data(self._res)
end
function Channel:output() return 0 end
-- Rules run on what has arrived; the channel does not wait for more.
function Channel:may_recv() return false end
function Channel:is_full() return false end
function Channel:is_resp() return self._res end
-- Deprecated names.
Channel.dup = Channel.data
function Channel:get()
    local d = self:data()
    if d then self:remove() end
    return d
end
function Channel:getline()
    local l = self:line()
    if l then self:remove(0, #l) end
    return l
end
Channel.get_in_len = Channel.input
Channel.get_out_len = Channel.output

local ReqChannel = setmetatable({ _res = false }, Channel)
local ResChannel = setmetatable({ _res = true }, Channel)

function mb.new_txn(_kind)
    return setmetatable({
        f = Fetches, sf = SFetches, c = Converters, sc = SConverters,
        http = mb.is_http() and setmetatable({}, HTTP) or nil,
        req = ReqChannel, res = ResChannel,
    }, TXN)
end

---------------------------------------------------------------------------
-- Applets

local AppletHTTP = {}
-- The request's fields are read from the host when first used.
local REQUEST_FIELDS = { method = true, path = true, qs = true, version = true,
    length = true, headers = true }
local function load_request(a)
    local id = rawget(a, "_req")
    if id == nil then return end
    a._req = nil
    local r = mb.applet_request(id)
    if r == nil then return end
    -- HAProxy gives the version as the request line has it ("HTTP/1.1").
    a.method, a.path, a.qs, a.length = r.method, r.path, r.qs, r.length
    a.version = "HTTP/" .. r.version
    a.headers = header_table(r.headers)
end
local AppletHTTPMeta = {
    __index = function(a, k)
        local m = AppletHTTP[k]
        if m == nil and REQUEST_FIELDS[k] then
            load_request(a)
            return rawget(a, k)
        end
        return m
    end,
    __pairs = function(a)
        load_request(a)
        return next, a, nil
    end,
}
function AppletHTTP:set_status(code, reason) self._status, self._reason = code, reason end
function AppletHTTP:add_header(name, value)
    self._headers[#self._headers + 1] = { name, tostring(value) }
end
function AppletHTTP:start_response()
    if self._started then return end
    self._started = true
    mb.applet_start(self._status, self._reason, self._headers)
end
-- Sent data is queued for the client without waiting, as into HAProxy's
-- channel buffer; only a full queue waits.
local function applet_send(data)
    data = tostring(data)
    if not mb.applet_write(data) then mb.applet_send(data) end
end
function AppletHTTP:send(data)
    self:start_response()
    applet_send(data)
end
function AppletHTTP:receive(size)
    if size == nil then return mb.applet_receive("all") or "" end
    return mb.applet_receive("count", size) or ""
end
function AppletHTTP:getline() return mb.applet_receive("line") or "" end
AppletHTTP.get_var = TXN.get_var
AppletHTTP.set_var = TXN.set_var
AppletHTTP.unset_var = TXN.unset_var
AppletHTTP.get_priv = TXN.get_priv
AppletHTTP.set_priv = TXN.set_priv

local AppletTCP = {}
AppletTCP.__index = AppletTCP
-- nil on timeout, "" once the client closed.
function AppletTCP:receive(size, timeout)
    if timeout ~= nil then timeout = math.max(0, math.floor(timeout)) end
    local data
    if size == nil or size < 0 then
        data = mb.applet_receive("all", nil, timeout)
    else
        data = mb.applet_receive("count", size, timeout)
    end
    return data
end
function AppletTCP:try_receive()
    local data = mb.applet_receive("all", nil, 0)
    if data == "" then return nil end
    return data
end
function AppletTCP:getline() return mb.applet_receive("line") or "" end
function AppletTCP:send(data) applet_send(data) end
AppletTCP.get_var = TXN.get_var
AppletTCP.set_var = TXN.set_var
AppletTCP.unset_var = TXN.unset_var
AppletTCP.get_priv = TXN.get_priv
AppletTCP.set_priv = TXN.set_priv

function mb.new_applet(kind, req_id)
    local base = { f = Fetches, sf = SFetches, c = Converters, sc = SConverters }
    if kind == "tcp" then return setmetatable(base, AppletTCP) end
    base._req, base._status, base._headers, base._started = req_id, 200, {}, false
    return setmetatable(base, AppletHTTPMeta)
end

function mb.applet_finish(a)
    if getmetatable(a) == AppletHTTPMeta and not a._started then a:start_response() end
end

---------------------------------------------------------------------------
-- Socket (core.tcp)

local Socket = {}
Socket.__index = Socket
local next_socket = 0

function core.tcp()
    next_socket = next_socket + 1
    return setmetatable({ id = next_socket, timeout = nil }, Socket)
end

function Socket:settimeout(t, _mode)
    if t == nil or t < 0 then self.timeout = nil else self.timeout = math.floor(t * 1000) end
    return 1
end

-- Connects, with TLS when `tls` is given ({ name =, verify = }).
local function open(self, host, port, tls)
    if port == nil then
        host, port = tostring(host):match("^(.*):(%d+)$")
        if host == nil then return nil, "invalid address" end
    end
    host = tostring(host):gsub("^ipv[46]@", "")
    if host == "localhost" then host = "127.0.0.1" end
    local addr = host:find(":", 1, true) and ("[" .. host .. "]:" .. port) or (host .. ":" .. port)
    self.peer = addr
    local ok, local_addr
    if tls then
        ok, local_addr = mb.connect(self.id, addr, self.timeout, true, tls.name, tls.verify)
    else
        ok, local_addr = mb.connect(self.id, addr, self.timeout, false, nil, false)
    end
    if not ok then return nil, local_addr end
    self.sockname = local_addr
    return 1
end

function Socket:connect(host, port) return open(self, host, port, nil) end

-- As in HAProxy, the server's certificate is not verified.
function Socket:connect_ssl(host, port) return open(self, host, port, { verify = false }) end

function Socket:send(data, i, j)
    data = tostring(data)
    if i ~= nil then data = data:sub(i, j or -1) end
    local n, err = mb.send(self.id, data)
    if n == nil then return nil, err, 0 end
    return (i or 1) + n - 1
end

function Socket:receive(pattern, prefix)
    pattern = pattern or "*l"
    local data, err, partial
    if type(pattern) == "number" then
        data, err, partial = mb.receive(self.id, "n", pattern, self.timeout)
    elseif pattern == "*a" or pattern == "*l" then
        data, err, partial = mb.receive(self.id, pattern, nil, self.timeout)
    else
        error("invalid receive pattern '" .. tostring(pattern) .. "'", 2)
    end
    if data == nil then return nil, err, (prefix or "") .. (partial or "") end
    return (prefix or "") .. data
end

function Socket:close() return mb.close(self.id) end

---------------------------------------------------------------------------
-- HTTP client (core.httpclient): HTTP/1.1 over core.tcp(), one request per
-- connection, over TLS for https:// (certificates verified unless
-- `httpclient.ssl.verify none`). No DNS: the host is an IP address, or
-- `dst` gives one.

local HttpClient = {}
HttpClient.__index = HttpClient
function core.httpclient() return setmetatable({}, HttpClient) end

local function dechunk(body)
    local out, pos = {}, 1
    while true do
        local size_line_end = body:find("\r\n", pos, true)
        if not size_line_end then return nil end
        local size = tonumber(body:sub(pos, size_line_end - 1):match("^%x+"), 16)
        if not size then return nil end
        if size == 0 then break end
        local start = size_line_end + 2
        out[#out + 1] = body:sub(start, start + size - 1)
        pos = start + size + 2
    end
    return table.concat(out)
end

-- An answer with status 0 tells the script that the request failed.
local function failed(why) return { status = 0, reason = why, headers = {}, body = "" } end

function HttpClient:request(method, t)
    t = t or {}
    local url = t.url or ""
    local scheme, host, port, path = url:match("^(https?)://([^/:]+):?(%d*)(.*)$")
    if not host then return failed("invalid url '" .. url .. "', expected http[s]://HOST[:PORT]/PATH") end
    local tls = scheme == "https"
    port = tonumber(port) or (tls and 443 or 80)
    if path == "" then path = "/" end
    local sock = core.tcp()
    if t.timeout then sock:settimeout(t.timeout / 1000) end
    local dst = t.dst
    local ok, err
    if tls then
        local name = (not host:match("^[%d.]+$") and not host:find(":", 1, true)) and host or nil
        ok, err = open(sock, dst or host, dst == nil and port or nil, { name = name, verify = mb.httpclient_verify })
    else
        ok, err = open(sock, dst or host, dst == nil and port or nil, nil)
    end
    if not ok then return failed(err) end
    local lines = { method .. " " .. path .. " HTTP/1.1", "host: " .. host .. ":" .. port, "connection: close" }
    local body = t.body or ""
    for name, values in pairs(t.headers or {}) do
        if type(values) ~= "table" then values = { values } end
        for _, v in pairs(values) do lines[#lines + 1] = name .. ": " .. tostring(v) end
    end
    if #body > 0 or method == "POST" or method == "PUT" then
        lines[#lines + 1] = "content-length: " .. #body
    end
    sock:send(table.concat(lines, "\r\n") .. "\r\n\r\n" .. body)
    local status_line, rerr = sock:receive("*l")
    if not status_line then sock:close(); return failed(rerr) end
    local status, reason = status_line:match("^HTTP/%d%.%d (%d+) ?(.*)$")
    local res = { status = tonumber(status), reason = reason, headers = {}, body = "" }
    while true do
        local line = sock:receive("*l")
        if not line or line == "" then break end
        local n, v = line:match("^([^:]+):%s*(.-)%s*$")
        if n then
            n = n:lower()
            local vals = res.headers[n]
            if not vals then vals = {}; res.headers[n] = vals; vals[0] = v
            else vals[#vals + 1] = v end
        end
    end
    local rest = sock:receive("*a") or ""
    sock:close()
    local te = res.headers["transfer-encoding"]
    if te and te[0]:lower():find("chunked", 1, true) then
        rest = dechunk(rest) or rest
    end
    res.body = rest
    return res
end

function HttpClient:get(t) return self:request("GET", t) end
function HttpClient:head(t) return self:request("HEAD", t) end
function HttpClient:put(t) return self:request("PUT", t) end
function HttpClient:post(t) return self:request("POST", t) end
function HttpClient:delete(t) return self:request("DELETE", t) end
function Socket:getpeername()
    if not self.peer then return nil end
    local h, p = self.peer:match("^%[?(.-)%]?:(%d+)$")
    return h, tonumber(p)
end
function Socket:getsockname()
    if not self.sockname then return nil end
    local h, p = self.sockname:match("^%[?(.-)%]?:(%d+)$")
    return h, tonumber(p)
end
function Socket:setoption() return 1 end
