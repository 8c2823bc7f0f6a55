-- PostgreSQL only (SQLite's planner and per-row triggers had neither
-- problem): two plans a fan-out over 100,000 agents met (issue #28).
--
-- 1. `cc_jobs_changed` joins a statement's old and new rows by job id.
-- The planner has no row count for a transition table and takes it for
-- one row, so it joined them by a nested loop: each settled or handed-over
-- group of 500 jobs compared 250,000 pairs, 34 ms of the 44 ms its event
-- rows took (the fan-out's costliest statement). A hash join reads each
-- side once. The setting holds only while the function runs.
ALTER FUNCTION cc_jobs_changed() SET enable_nestloop = off;

-- 2. A hand-over asks for one host's jobs in one status. With statistics
-- taken before the fan-out (no job queued), the planner saw the status
-- index as good as the (hostname, status) one and chose it: every
-- hand-over then read all 100,000 queued jobs, and a fan-out acknowledged
-- nothing for minutes. With the host in the status index too, both
-- indexes find a host's jobs exactly, whichever is chosen.
DROP INDEX jobs_by_status;
CREATE INDEX jobs_by_status ON jobs (status, hostname);
