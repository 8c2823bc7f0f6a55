//! The root helper's reports of scheduled system jobs, moved into the
//! agent's outbox (system mode; the session calls this every outbox scan).

use anyhow::{Result, bail};
use tracing::warn;

use crate::outbox::Outbox;

/// Takes the reports of scheduled system jobs the helper keeps, stores
/// each in the outbox, then tells the helper it may forget them: a report
/// is on the agent's disk before root lets go of it.
pub(crate) fn collect_helper_reports(socket: &std::path::Path, outbox: &Outbox) -> Result<usize> {
    use cc_proto::helper::{AckReportsRequest, HelperRequest, HelperResponse};
    let mut moved = 0;
    loop {
        let reports = match crate::helper_client::call(socket, &HelperRequest::TakeReports)? {
            HelperResponse::Reports(r) => r,
            HelperResponse::Refused(r) => {
                bail!("the root helper refused take_reports: {}", r.message)
            }
            _ => bail!("the root helper gave an unexpected answer to take_reports"),
        };
        if reports.is_empty() {
            return Ok(moved);
        }
        let mut ids = Vec::new();
        for report in reports {
            let Some(id) = report.report_id.clone() else {
                continue;
            };
            match report.validate() {
                Ok(_) => {
                    outbox.put(report)?;
                    moved += 1;
                }
                Err(e) => {
                    warn!(report_id = %id, "invalid report from the root helper dropped: {e}")
                }
            }
            ids.push(id);
        }
        if ids.is_empty() {
            return Ok(moved);
        }
        crate::helper_client::call(
            socket,
            &HelperRequest::AckReports(AckReportsRequest { report_ids: ids }),
        )?;
    }
}
