core.Debug("Hello HAProxy!\n")
