//! `rask report --since 10m --out report.html`: a performance report of the task events of a
//! time window, as one self-contained HTML file.

use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::cli::{Global, ReportArgs};
use crate::output::connect;

pub(crate) async fn run(global: &Global, args: ReportArgs) -> Result<ExitCode> {
    let client = connect(global).await?;
    let page = client.report_since(args.since).await?;
    std::fs::write(&args.out, page).with_context(|| format!("writing {}", args.out.display()))?;
    println!("{}", args.out.display());
    Ok(ExitCode::SUCCESS)
}
