//! Samples, their medians and ranges, and the results as a table and as JSON.
//!
//! May not: run anything: samples in, numbers and text out.

use std::collections::BTreeMap;

/// One measured quantity: every sample after the warm-up, in its unit.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Metric {
    pub unit: String,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub samples: Vec<f64>,
}

impl Metric {
    pub fn new(unit: &str, samples: Vec<f64>) -> Option<Metric> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Metric {
            unit: unit.to_string(),
            median,
            min: sorted[0],
            max: sorted[n - 1],
            samples,
        })
    }

    pub fn ms(samples: Vec<f64>) -> Option<Metric> {
        Metric::new("ms", samples)
    }

    /// `median (min–max)` for a table cell.
    pub fn cell(&self) -> String {
        let median = fmt_value(self.median, &self.unit);
        if self.samples.len() > 1 && self.min != self.max {
            format!(
                "{median} ({}–{})",
                fmt_value(self.min, &self.unit),
                fmt_value(self.max, &self.unit)
            )
        } else {
            median
        }
    }
}

/// Named metrics.
#[derive(Debug, Default, Clone, serde::Serialize)]
#[serde(transparent)]
pub struct Metrics(pub BTreeMap<String, Metric>);

impl Metrics {
    pub fn put(&mut self, name: &str, m: Option<Metric>) {
        if let Some(m) = m {
            self.0.insert(name.to_string(), m);
        }
    }

    pub fn median(&self, name: &str) -> Option<f64> {
        self.0.get(name).map(|m| m.median)
    }
}

/// A value for a table cell: milliseconds under 10 s, seconds above; MiB for memory.
pub fn fmt_value(v: f64, unit: &str) -> String {
    match unit {
        "ms" if v >= 10_000.0 => format!("{:.1} s", v / 1000.0),
        "ms" if v >= 100.0 => format!("{v:.0} ms"),
        "ms" => format!("{v:.1} ms"),
        "MiB" => format!("{v:.1} MiB"),
        "x" => format!("{v:.2}×"),
        _ => format!("{v:.2} {unit}"),
    }
}
