//! One measurement (a row) and the side-by-side summary of a case.

use super::stats;
use serde_json::{json, Map, Value};

pub struct Row {
    pub target: String,
    pub summary: String,
    pub metrics: Vec<(&'static str, f64)>,
    /// Deliveries, replies or acks that never arrived.
    pub lost: u64,
    /// Anything else wrong (duplicates, unexpected messages, deadlines).
    pub errors: Vec<String>,
}

impl Row {
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }

    pub fn ok(&self) -> bool {
        self.lost == 0 && self.errors.is_empty()
    }

    pub fn to_json(&self, scenario: &str, case: &str, rep: usize) -> Value {
        let mut m = Map::new();
        m.insert("scenario".into(), json!(scenario));
        m.insert("case".into(), json!(case));
        m.insert("rep".into(), json!(rep));
        m.insert("target".into(), json!(self.target));
        for (k, v) in &self.metrics {
            m.insert((*k).into(), if v.is_finite() { json!(v) } else { Value::Null });
        }
        m.insert("lost".into(), json!(self.lost));
        m.insert("errors".into(), json!(self.errors));
        Value::Object(m)
    }
}

/// Which figures a case is judged by; the first is the headline.
pub struct Judged {
    pub metric: &'static str,
    pub unit: &'static str,
    pub higher_is_better: bool,
}

/// Medians per target and each other target's ratio to the baseline
/// `raw_label` (the raw loop, plain pub/sub for `queue`, or the one mc0d
/// with `--brokers`), oriented so that > 1 means better than it.
pub fn summarize(
    scenario: &str,
    case: &str,
    judged: &[Judged],
    rows: &[(String, Vec<Row>)],
    raw_label: &str,
) -> (Vec<String>, Value) {
    let mut lines = Vec::new();
    let mut figures = Map::new();
    let raw = rows.iter().find(|(t, _)| t == raw_label);
    for j in judged {
        let med = |rs: &[Row]| stats::median(&rs.iter().filter_map(|r| r.metric(j.metric)).collect::<Vec<_>>());
        let raw_med = raw.map(|(_, rs)| med(rs));
        let mut per_target = Map::new();
        let mut parts = Vec::new();
        for (target, rs) in rows {
            let m = med(rs);
            per_target.insert(target.clone(), if m.is_finite() { json!(m) } else { Value::Null });
            parts.push(format!("{target} {}", fmt(m, j.unit)));
            if target == raw_label {
                continue;
            }
            if let Some(r) = raw_med.filter(|r| r.is_finite() && *r > 0.0) {
                let ratio = if j.higher_is_better { m / r } else { r / m };
                per_target.insert(format!("{target}_vs_{raw_label}"), json!(ratio));
                parts.push(format!("=> {target}/{raw_label} {ratio:.2}x"));
            }
        }
        lines.push(format!("  {:<18} {}", j.metric, parts.join("  ")));
        figures.insert(j.metric.into(), Value::Object(per_target));
    }
    let reps = rows.iter().map(|(_, r)| r.len()).max().unwrap_or(0);
    let value = json!({"scenario": scenario, "case": case, "summary": figures, "repeats": reps});
    (lines, value)
}

fn fmt(v: f64, unit: &str) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    match unit {
        "ms" => stats::ms(v),
        "%" => format!("{v:.2}%"),
        "KiB" => format!("{v:.1} KiB"),
        _ if v >= 100.0 => format!("{v:.0}{unit}"),
        _ => format!("{v:.2}{unit}"),
    }
}
