core.register_fetches("least_sessions", function(txn)
    local least_sessions_backend = ""
    local least_sessions = 99999999999

    for backend_name, backend in pairs(core.backends) do
        if backend_name:sub(1, #txn.f:fe_name()) == txn.f:fe_name() then
            local total_sessions = 0
            for _, server in pairs(backend.servers) do
                local server_stats = server:get_stats()
                total_sessions = total_sessions + server_stats['scur']
            end
            if total_sessions < least_sessions
                or (total_sessions == least_sessions and backend_name < least_sessions_backend) then
                least_sessions = total_sessions
                least_sessions_backend = backend_name
            end
        end
    end

    return least_sessions_backend
end)
