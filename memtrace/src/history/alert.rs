//! `--alert` rules: parsed from what the user wrote, evaluated on the
//! history after each sample.
//!
//! Three forms (sizes in binary units, durations in ms/s/m/h):
//!
//! - `rss>2GiB`: the process's resident memory (`Rss`, file-backed too)
//!   is above 2 GiB now.
//! - `growth>100MiB/10m`: the process's RSS rose by more than 100 MiB over
//!   the last 10 minutes (from the newest sample at least that old, or the
//!   oldest one the window holds).
//! - `site-growth>50MiB/5m`: some call site's RSS rose by more than 50 MiB
//!   over the last 5 minutes (the largest such rise is the value).
//!
//! A rule *trips* when it starts firing; [`Alerts::evaluate`] returns the
//! rules that tripped at that sample, for one line each.

use std::{fmt, str::FromStr, time::Duration};

use serde::Serialize;

use super::{History, growth};
use crate::units;

/// What a rule watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Process RSS now.
    Rss,
    /// Process RSS growth over a span.
    Growth { span: Duration },
    /// Largest call-site RSS growth over a span.
    SiteGrowth { span: Duration },
}

/// One `--alert` rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// As the user wrote it (whitespace removed).
    pub text: String,
    pub metric: Metric,
    /// Fires when the value is above this many bytes.
    pub threshold_bytes: u64,
}

/// Why a rule could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid alert rule `{rule}`: {reason}; expected rss>SIZE, growth>SIZE/DURATION or site-growth>SIZE/DURATION (e.g. rss>2GiB, growth>100MiB/10m, site-growth>50MiB/5m)"
)]
pub struct RuleError {
    pub rule: String,
    pub reason: String,
}

impl FromStr for Rule {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Rule, RuleError> {
        let text: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        let err = |reason: String| RuleError {
            rule: s.to_owned(),
            reason,
        };
        let Some((name, rest)) = text.split_once('>') else {
            return Err(err("no `>`".into()));
        };
        if rest.starts_with('=') {
            return Err(err("only `>` is supported".into()));
        }
        let (size, span) = match rest.split_once('/') {
            Some((size, span)) => (size, Some(span)),
            None => (rest, None),
        };
        let threshold_bytes = units::parse_size(size).map_err(err)?;
        let span = span
            .map(|d| units::parse_duration(d).map_err(err))
            .transpose()?;
        let metric = match (name, span) {
            ("rss", None) => Metric::Rss,
            ("rss", Some(_)) => return Err(err("`rss` takes no /DURATION".into())),
            ("growth", Some(span)) => Metric::Growth { span },
            ("site-growth", Some(span)) => Metric::SiteGrowth { span },
            ("growth" | "site-growth", None) => {
                return Err(err(format!(
                    "`{name}` needs a /DURATION (e.g. {name}>100MiB/10m)"
                )));
            }
            (other, _) => return Err(err(format!("unknown measure `{other}`"))),
        };
        Ok(Rule {
            text,
            metric,
            threshold_bytes,
        })
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Rule {
    /// The span the rule looks back over (none for `rss`).
    pub fn span(&self) -> Option<Duration> {
        match self.metric {
            Metric::Rss => None,
            Metric::Growth { span } | Metric::SiteGrowth { span } => Some(span),
        }
    }

    /// The value now (bytes) and a sentence saying what it is.
    fn measure(&self, h: &History) -> (f64, String) {
        let times = h.times();
        let limit = units::human(self.threshold_bytes);
        match self.metric {
            Metric::Rss => {
                let rss = h.latest().map_or(0, |t| t.rss_bytes);
                (
                    rss as f64,
                    format!("process RSS is {} (limit {limit})", units::human(rss)),
                )
            }
            Metric::Growth { span } => {
                let rss: Vec<u64> = h.totals().map(|t| t.rss_bytes).collect();
                let g = growth::growth_over(&times, &rss, span.as_millis() as u64);
                (
                    g as f64,
                    format!(
                        "process RSS grew {} in the last {} (limit {limit})",
                        signed(g),
                        growth::human_duration(span)
                    ),
                )
            }
            Metric::SiteGrowth { span } => {
                let best = h
                    .site_values()
                    .map(|s| {
                        let g = growth::growth_over(&times, &s.values, span.as_millis() as u64);
                        (g, s.label.to_owned())
                    })
                    .max_by_key(|(g, _)| *g);
                match best {
                    Some((g, label)) => (
                        g as f64,
                        format!(
                            "call site {label} grew {} in the last {} (limit {limit})",
                            signed(g),
                            growth::human_duration(span)
                        ),
                    ),
                    None => (0.0, "no call site holds memory".into()),
                }
            }
        }
    }
}

fn signed(v: i64) -> String {
    if v < 0 {
        format!("-{}", units::human(v.unsigned_abs()))
    } else {
        units::human(v as u64)
    }
}

/// A rule's state after the last sample (`alerts` in `history.json`, the
/// `{"type":"alert"}` line).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AlertState {
    pub rule: String,
    pub firing: bool,
    /// When it started firing (ms since the epoch); null when not firing.
    pub since_unix_ms: Option<u64>,
    /// The measured value, bytes.
    pub value: f64,
    pub message: String,
}

/// The rules and their states.
#[derive(Clone, Debug, Default)]
pub struct Alerts {
    rules: Vec<Rule>,
    states: Vec<AlertState>,
}

impl Alerts {
    pub fn new(rules: Vec<Rule>) -> Alerts {
        let states = rules
            .iter()
            .map(|r| AlertState {
                rule: r.text.clone(),
                firing: false,
                since_unix_ms: None,
                value: 0.0,
                message: String::new(),
            })
            .collect();
        Alerts { rules, states }
    }

    /// Every rule's state after the last [`Alerts::evaluate`].
    pub fn states(&self) -> &[AlertState] {
        &self.states
    }

    /// Whether some rule is firing.
    pub fn any_firing(&self) -> bool {
        self.states.iter().any(|s| s.firing)
    }

    /// Evaluate every rule on the history's newest sample; the states of
    /// the rules that tripped (started firing) now.
    pub fn evaluate(&mut self, h: &History) -> Vec<AlertState> {
        let now = h.latest().map_or(0, |t| t.unix_ms);
        let mut tripped = Vec::new();
        for (rule, state) in self.rules.iter().zip(&mut self.states) {
            let (value, what) = rule.measure(h);
            let firing = value > rule.threshold_bytes as f64;
            state.value = value;
            state.message = what;
            if firing && !state.firing {
                state.since_unix_ms = Some(now);
                state.firing = true;
                tripped.push(state.clone());
            } else if !firing {
                state.firing = false;
                state.since_unix_ms = None;
            }
        }
        tripped
    }
}

#[cfg(test)]
mod tests {
    use super::super::{HistoryConfig, Sample, SampleTotals, SitePoint};
    use super::*;
    use crate::attribution::report::SiteCategory;

    #[test]
    fn rules_parse_or_say_what_is_wrong() {
        let r: Rule = "rss>2GiB".parse().expect("rss");
        assert_eq!((r.metric, r.threshold_bytes), (Metric::Rss, 2 << 30));
        let r: Rule = " growth > 100MiB/10m".parse().expect("growth");
        assert_eq!(
            r.metric,
            Metric::Growth {
                span: Duration::from_secs(600)
            }
        );
        assert_eq!(r.to_string(), "growth>100MiB/10m");
        let r: Rule = "site-growth>50MiB/5m".parse().expect("site");
        assert_eq!(r.threshold_bytes, 50 << 20);
        for (bad, why) in [
            ("rss=2GiB", "no `>`"),
            ("rss>=2GiB", "only `>`"),
            ("rss>2GB", "unknown size unit `GB`"),
            ("rss>2GiB/5m", "takes no /DURATION"),
            ("growth>1GiB", "needs a /DURATION"),
            ("growth>1GiB/5y", "unknown duration unit"),
            ("heap>1GiB", "unknown measure `heap`"),
        ] {
            let e = bad.parse::<Rule>().expect_err(bad).to_string();
            assert!(
                e.contains(why) && e.contains("expected rss>SIZE"),
                "{bad}: {e}"
            );
        }
    }

    fn sample(t: u64, rss: u64, site: u64) -> Sample {
        Sample {
            totals: SampleTotals {
                unix_ms: t,
                rss_bytes: rss,
                ..SampleTotals::default()
            },
            categories: [0; 7],
            sites: vec![SitePoint {
                key: "k".into(),
                label: "app::leak".into(),
                category: SiteCategory::OtherCallSites,
                subcategory: "other",
                rss_bytes: site,
            }],
        }
    }

    #[test]
    fn rules_trip_once_and_clear() {
        let mut h = History::new(HistoryConfig {
            sample_every: Duration::from_secs(1),
            window: Duration::from_secs(60),
            max_sites: 10,
        });
        let rules = ["rss>100MiB", "growth>30MiB/3s", "site-growth>20MiB/2s"]
            .iter()
            .map(|r| r.parse().expect("rule"))
            .collect();
        let mut alerts = Alerts::new(rules);
        const M: u64 = 1 << 20;
        let mut trips = Vec::new();
        for (i, (rss, site)) in [(50, 0), (60, 10), (70, 20), (80, 35), (110, 60), (40, 0)]
            .iter()
            .enumerate()
        {
            h.push(sample(i as u64 * 1000, rss * M, site * M));
            for t in alerts.evaluate(&h) {
                trips.push((i, t.rule, t.value as u64 / M));
            }
        }
        assert_eq!(
            trips,
            vec![
                (3, "site-growth>20MiB/2s".to_owned(), 25),
                (4, "rss>100MiB".to_owned(), 110),
                (4, "growth>30MiB/3s".to_owned(), 50),
            ]
        );
        assert!(
            !alerts.any_firing(),
            "everything fell back at the last sample"
        );
        let s = &alerts.states()[0];
        assert_eq!((s.firing, s.since_unix_ms), (false, None));
        assert!(
            s.message.contains("process RSS is 40.0 MiB"),
            "{}",
            s.message
        );
    }
}
