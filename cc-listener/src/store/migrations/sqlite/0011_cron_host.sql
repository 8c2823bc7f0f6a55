-- What the agent last said of its host's cron daemon and time zone (the
-- `cronHost` extension, as JSON): whether its entries can fire, and in
-- which zone. NULL: an agent that does not say.
ALTER TABLE agents ADD COLUMN cron_host TEXT;
