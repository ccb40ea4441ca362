//! The history and alert flags shared by `memtrace --pid/-- CMD` and
//! `memtrace serve --trace`.

use std::time::Duration;

use anyhow::bail;
use memtrace::history::{HistoryConfig, WatchOptions, alert::Rule};

#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "History and alerts")]
pub struct HistoryArgs {
    /// Sample the attributed report this often while tracing (e.g. 10s,
    /// 500ms): per call site and per category RSS, process RSS, anonymous
    /// RSS and swap, coverage, events, lost events.
    #[arg(long, value_name = "DURATION", default_value = "10s",
          value_parser = memtrace::units::parse_duration)]
    pub sample_every: Duration,

    /// How much history to keep (e.g. 1h, 10m). Memory is bounded: at most
    /// 500 call sites × (history / sample-every) samples of 8 bytes, the
    /// other sites summed as "other" (1.4 MiB with the defaults).
    #[arg(long = "history", value_name = "DURATION", default_value = "1h",
          value_parser = memtrace::units::parse_duration)]
    pub history: Duration,

    /// List a call site under "Growing" when its RSS rose more than this
    /// over the history window (e.g. 16MiB, 1GiB).
    #[arg(long, value_name = "SIZE", default_value = "16MiB",
          value_parser = memtrace::units::parse_size)]
    pub grow_threshold: u64,

    /// Alert when a rule trips, checked at every sample (repeatable):
    ///   rss>2GiB               process RSS above 2 GiB
    ///   growth>100MiB/10m      process RSS up more than 100 MiB in 10 minutes
    ///   site-growth>50MiB/5m   some call site up more than 50 MiB in 5 minutes
    /// Each trip prints one line (`!! alert …`, or {"type":"alert",…} with --json).
    #[arg(long = "alert", value_name = "RULE", verbatim_doc_comment,
          value_parser = |s: &str| s.parse::<Rule>().map_err(|e| e.to_string()))]
    pub alerts: Vec<Rule>,
}

impl HistoryArgs {
    /// The options, or why they do not fit together.
    pub fn watch_options(&self) -> anyhow::Result<WatchOptions> {
        let config =
            HistoryConfig::new(self.sample_every, self.history).map_err(anyhow::Error::msg)?;
        for rule in &self.alerts {
            if let Some(span) = rule.span()
                && span > self.history
            {
                bail!(
                    "--alert {rule}: looks back {span:?}, more than --history {:?} keeps; raise \
                     --history",
                    self.history
                );
            }
        }
        Ok(WatchOptions {
            config,
            grow_threshold: self.grow_threshold,
            rules: self.alerts.clone(),
        })
    }
}
