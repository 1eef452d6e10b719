-- Extensions for the profile-guided build's training load
-- (scripts/build-pgo.sh): one of each kind the anchor's scenarios use.

core.register_action("tag", { "http-req" }, function(txn)
    local tenant = txn:get_var("txn.tenant")
    txn.http:req_set_header("x-tenant", tenant or "none")
end)

core.register_fetches("greeting", function(txn)
    return "hello from " .. (txn.sf:path() or "/")
end)

core.register_converters("enc", function(s)
    return (s:gsub("[^%w%-_%.~]", function(c)
        return string.format("%%%02X", c:byte())
    end))
end)

core.register_service("answer", "http", function(applet)
    local body = "ok\n"
    applet:set_status(200)
    applet:add_header("content-type", "text/plain")
    applet:add_header("content-length", tostring(#body))
    applet:start_response()
    applet:send(body)
end)
