//! Progress bars for long commands, shown only when stdout is a terminal
//! (scripts and `--output json` get clean output).

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Instant;

/// A progress bar, or nothing when stdout is not a terminal.
#[derive(Debug, Clone)]
pub struct Progress(Arc<Option<indicatif::ProgressBar>>);

/// A bar to `total` records, or `total` seconds when `timed`.
pub fn bar(total: u64, timed: bool) -> Progress {
    if !std::io::stdout().is_terminal() {
        return Progress(Arc::new(None));
    }
    let pb = indicatif::ProgressBar::new(total);
    let template = if timed {
        "{spinner} {elapsed_precise} [{bar:40}] {pos}/{len} s"
    } else {
        "{spinner} {elapsed_precise} [{bar:40}] {pos}/{len} records ({per_sec}, eta {eta})"
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        pb.set_style(style.progress_chars("=> "));
    }
    Progress(Arc::new(Some(pb)))
}

impl Progress {
    /// Advances by `n`.
    pub fn inc(&self, n: u64) {
        if let Some(pb) = self.0.as_ref() {
            pb.inc(n);
        }
    }

    /// For timed runs: moves the bar with the clock until aborted.
    pub fn tick_seconds(&self, deadline: Option<Instant>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let (Some(_), Some(pb)) = (deadline, me.0.as_ref()) else { return };
            let start = Instant::now();
            loop {
                pb.set_position(start.elapsed().as_secs());
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        })
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(pb) = self.0.as_ref() {
            pb.finish_and_clear();
        }
    }
}
