-- Extensions for the criterion benchmarks of one Lua call.
core.register_fetches("noop", function(txn) return true end)
core.register_converters("noop", function(s) return s end)
core.register_action("noop", { "http-req" }, function(txn) end, 0)
core.register_action("tag_tenant", { "http-req" }, function(txn)
    local v = txn:get_var("txn.tenant")
    txn.http:req_set_header("X-Tenant", v or "none")
end, 0)
