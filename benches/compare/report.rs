//! Samples in, the table out: medians per helper and their ratio to slirp4netns.

use std::collections::BTreeMap;

use crate::cases::{Metric, Settings};
use crate::helper::Kind;

#[derive(Default)]
pub struct Results {
    samples: BTreeMap<(Metric, Kind), Vec<f64>>,
    /// What failed, per helper: shown under the table.
    failures: BTreeMap<Kind, Vec<String>>,
    /// Lines for the detailed output (syscall breakdowns), per helper.
    details: BTreeMap<Kind, Vec<String>>,
}

impl Results {
    pub fn add(&mut self, metric: Metric, kind: Kind, value: f64) {
        self.samples.entry((metric, kind)).or_default().push(value);
    }

    pub fn fail(&mut self, kind: Kind, what: String) {
        self.failures.entry(kind).or_default().push(what);
    }

    pub fn detail(&mut self, kind: Kind, line: String) {
        self.details.entry(kind).or_default().push(line);
    }

    pub fn details_text(&self) -> String {
        lines_per_kind(&self.details, |kind, line| format!("  {kind:<12} {line}\n"))
    }

    fn median(&self, metric: Metric, kind: Kind) -> Option<f64> {
        let mut values = self.samples.get(&(metric, kind))?.clone();
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let mid = values.len() / 2;
        Some(if values.len() % 2 == 1 {
            values[mid]
        } else {
            (values[mid - 1] + values[mid]) / 2.0
        })
    }

    /// The Markdown table: one row per metric, medians, then each helper's ratio to
    /// slirp4netns (the baseline everyone knows).
    pub fn table(&self, kinds: &[Kind], settings: &Settings) -> String {
        let others: Vec<Kind> = kinds
            .iter()
            .copied()
            .filter(|&k| k != Kind::Slirp4netns)
            .collect();
        let mut out = String::from("| metric | better |");
        for kind in kinds {
            out += &format!(" {} |", kind.name());
        }
        for kind in &others {
            out += &format!(" {} / slirp4netns |", kind.name());
        }
        out += "\n|---|---|";
        out += &"---:|".repeat(kinds.len() + others.len());
        out += "\n";
        for metric in Metric::ALL {
            let better = if metric.higher_is_better() {
                "higher"
            } else {
                "lower"
            };
            out += &format!("| {} | {better} |", metric.label(settings));
            for &kind in kinds {
                out += &format!(" {} |", cell(self.median(metric, kind), metric));
            }
            let baseline = self.median(metric, Kind::Slirp4netns);
            for &kind in &others {
                let ratio = match (self.median(metric, kind), baseline) {
                    (Some(value), Some(base)) if base > 0.0 => format!("{:.2}×", value / base),
                    _ => "n/a".to_string(),
                };
                out += &format!(" {ratio} |");
            }
            out += "\n";
        }
        out
    }

    /// Every sample, for the record (medians hide spread).
    pub fn samples_text(&self, settings: &Settings) -> String {
        let mut out = String::new();
        for ((metric, kind), values) in &self.samples {
            let values: Vec<String> = values.iter().map(|&v| cell(Some(v), *metric)).collect();
            out += &format!(
                "  {:<52} {:<12} {}\n",
                metric.label(settings),
                kind.name(),
                values.join("  ")
            );
        }
        out
    }

    pub fn failures_text(&self) -> String {
        lines_per_kind(&self.failures, |kind, failure| {
            format!("  {kind}: {failure}\n")
        })
    }
}

/// Every line of every helper, each written by `format` from the helper's name and the line.
fn lines_per_kind(
    lines: &BTreeMap<Kind, Vec<String>>,
    format: impl Fn(&str, &str) -> String,
) -> String {
    lines
        .iter()
        .flat_map(|(kind, lines)| lines.iter().map(|line| format(kind.name(), line)))
        .collect()
}

/// A value with the precision its unit deserves.
fn cell(value: Option<f64>, metric: Metric) -> String {
    let Some(value) = value else {
        return "n/a".to_string();
    };
    match metric {
        Metric::GuestToHost1500
        | Metric::GuestToHost65520
        | Metric::HostToGuest1500
        | Metric::HostToGuest65520 => format!("{value:.2}"),
        Metric::Ready | Metric::RssPerFlow | Metric::SyscallsTcpRoundTrip => format!("{value:.1}"),
        Metric::SyscallsUdpRoundTrip | Metric::SyscallsConnection => format!("{value:.1}"),
        _ => format!("{value:.0}"),
    }
}
