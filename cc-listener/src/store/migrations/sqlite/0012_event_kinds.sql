-- Events of more than jobs: `kind` says what an event is about — 'job' (a
-- job's state changed, as before), 'cron' (a scheduled run of a cron entry:
-- `job_id` is the entry's id) or 'host' (a host's state: `job_id` is
-- empty) — and `detail` says why, when the status alone does not (the
-- reason a run was missed).
ALTER TABLE events ADD COLUMN kind TEXT NOT NULL DEFAULT 'job';
ALTER TABLE events ADD COLUMN detail TEXT;
