core.register_action("checkip", { "http-req" }, function(txn, ip, port)
    local clientip = txn.f:src()
    local socket = core.tcp()
    socket:settimeout(5)

    if socket:connect(ip, port) then
        if socket:send(string.format("GET /%s HTTP/1.1\r\nHost: %s:%s\r\n\r\n", clientip, ip, port)) then
            -- skip the status line and the headers
            while true do
                local line, _ = socket:receive("*l")
                if not line then break end
                if line == "" then break end
            end
            local content = socket:receive("*a")
            if content == "allow" then
                txn:set_var("req.blocked", false)
            else
                txn:set_var("req.blocked", true)
            end
        end
        socket:close()
    else
        txn:set_var("req.blocked", true)
    end
end, 2)
