"""The Lua that jobs and bulk jobs share: their lifecycle (queued -> running -> a terminal state that never
changes) as their stores' scripts test and end it. Each script that uses it runs atomically in Redis."""

from __future__ import annotations

# True in a script whose local `status` holds a record's status and that status is terminal: only `queued` and
# `running` are not, for jobs and bulk jobs alike.
TERMINAL_LUA = "(status ~= 'queued' and status ~= 'running')"

# The step that ends a record unless it has ended: with locals `job_key` (the record's hash) and `now`, and
# ARGV[1] the terminal status, ARGV[3] the error's JSON or ''. Returns from the script with '' when there is no
# such record, or with its status when it had ended already; else goes on with `status` unchanged (the old one).
END_UNLESS_ENDED_LUA = f"""
local status = redis.call('HGET', job_key, 'status')
if not status then return '' end
if {TERMINAL_LUA} then return status end
redis.call('HSET', job_key, 'status', ARGV[1], 'completed_at', now)
if ARGV[3] ~= '' then redis.call('HSET', job_key, 'error', ARGV[3]) end
"""
