"""Everything latentq keeps in Redis: keys, connections, fenced scripts, RQ's records, admission, tenants, the job lifecycle, metrics, the deployment."""
