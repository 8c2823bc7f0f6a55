//! What the agent does with what the listener sends, apart from the link
//! that carries it: jobs (`job`), cron lists (`cron`), and the root
//! helper's reports of scheduled system jobs (`helper`). Nothing here
//! touches a socket; the session (`link::session`) decodes a message and
//! calls the handler, then sends what it returns.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::Config;
use crate::jobs::Jobs;
use crate::outbox::Outbox;
use crate::runner::Runner;

pub(crate) mod cron;
pub(crate) mod helper;
pub(crate) mod job;

/// Messages from the listener dropped or ignored, logged 100 in 10 s at
/// most: a hostile listener can send them as fast as it likes.
pub(crate) static FROM_LISTENER: cc_proto::logline::LogBudget =
    cc_proto::logline::LogBudget::new(Duration::from_secs(10), 100);

/// The agent's state that outlives connections.
pub(crate) struct Agent {
    pub(crate) cfg: Config,
    pub(crate) outbox: Outbox,
    pub(crate) runner: Arc<Runner>,
    pub(crate) jobs: Arc<Jobs>,
    /// Told when a report is in the outbox.
    pub(crate) done: mpsc::Sender<()>,
}
