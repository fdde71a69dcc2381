//! A strict reader of the Prometheus text exposition format (0.0.4), to check what
//! `GET /metrics/prometheus` serves: every line is a comment, a HELP, a TYPE or a sample of
//! the right shape; every family has one HELP and one TYPE before its samples, and its
//! samples are together; counters end in `_total`; names start with `cma_`; no series
//! (name and label set) appears twice. Panics with the offending line otherwise.

use std::collections::{BTreeMap, BTreeSet};

/// One sample: name, labels (sorted), value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The metric name (with a summary's `_sum`/`_count` suffix).
    pub name: String,
    /// Label pairs.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

/// A parsed exposition.
#[derive(Debug, Default)]
pub struct Exposition {
    /// Family name to its TYPE.
    pub types: BTreeMap<String, String>,
    /// Every sample, in order.
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// The value of `name` with exactly `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    is_name(s) && !s.contains(':') && !s.starts_with("__")
}

/// `{a="x",b="y"}` (without the braces) into pairs, unescaping values.
fn parse_labels(s: &str, line: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("label without =\": {line}"));
        assert!(is_label_name(name), "bad label name {name:?}: {line}");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => panic!("bad escape {other:?}: {line}"),
                },
                Some((i, '"')) => break i,
                Some((_, '\n')) => panic!("raw line feed in a label: {line}"),
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value: {line}"),
            }
        };
        assert!(
            labels.insert(name.to_string(), value).is_none(),
            "label {name} twice: {line}"
        );
        rest = &after[end + 1..];
        rest = match rest.strip_prefix(',') {
            Some(r) => r,
            None if rest.is_empty() => rest,
            None => panic!("labels not separated by commas: {line}"),
        };
    }
    labels
}

fn parse_value(s: &str, line: &str) -> f64 {
    match s {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        _ => s
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad value {s:?}: {line}")),
    }
}

/// The family a sample belongs to (a summary's `_sum`/`_count` belong to the summary).
fn family_of<'a>(name: &'a str, types: &BTreeMap<String, String>) -> &'a str {
    for suffix in ["_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && types
                .get(base)
                .is_some_and(|t| t == "summary" || t == "histogram")
        {
            return base;
        }
    }
    name
}

/// Parse `text`, panicking at the first thing that breaks the format or the conventions.
pub fn parse(text: &str) -> Exposition {
    assert!(text.ends_with('\n'), "the exposition ends with a line feed");
    let mut e = Exposition::default();
    let mut helps = BTreeSet::new();
    let mut finished = BTreeSet::new();
    let mut current: Option<String> = None;
    let mut series = BTreeSet::new();
    for line in text.lines() {
        assert!(!line.is_empty(), "empty line");
        assert_eq!(line.trim_end(), line, "trailing space: {line:?}");
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or_else(|| panic!("{line}"));
            assert!(is_name(name), "bad name: {line}");
            assert!(!help.trim().is_empty(), "empty HELP: {line}");
            assert!(helps.insert(name.to_string()), "second HELP: {line}");
            assert!(!finished.contains(name), "family {name} split: {line}");
            if let Some(prev) = current.replace(name.to_string())
                && prev != name
            {
                finished.insert(prev);
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("{line}"));
            assert!(
                ["counter", "gauge", "summary", "histogram", "untyped"].contains(&kind),
                "bad TYPE: {line}"
            );
            assert!(helps.contains(name), "TYPE before HELP: {line}");
            assert_eq!(
                current.as_deref(),
                Some(name),
                "TYPE of another family: {line}"
            );
            assert!(
                e.types.insert(name.to_string(), kind.to_string()).is_none(),
                "second TYPE: {line}"
            );
            assert!(name.starts_with("cma_"), "no cma_ prefix: {line}");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter without _total: {line}");
            } else {
                assert!(!name.ends_with("_total"), "_total on a {kind}: {line}");
            }
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment: {line}");
        let (series_part, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let (name, labels) = match series_part.split_once('{') {
            Some((name, rest)) => {
                let inner = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels: {line}"));
                (name, parse_labels(inner, line))
            }
            None => (series_part, BTreeMap::new()),
        };
        assert!(is_name(name), "bad metric name: {line}");
        let family = family_of(name, &e.types);
        let kind = e
            .types
            .get(family)
            .unwrap_or_else(|| panic!("sample without HELP/TYPE: {line}"));
        assert_eq!(
            current.as_deref(),
            Some(family),
            "sample outside its family: {line}"
        );
        if kind == "summary" && family == name {
            assert!(
                labels.contains_key("quantile"),
                "summary without quantile: {line}"
            );
        }
        let value = parse_value(value, line);
        if kind == "counter" || name.ends_with("_count") {
            assert!(value >= 0.0 && value.fract() == 0.0, "bad count: {line}");
        }
        assert!(
            series.insert(format!("{name}{labels:?}")),
            "duplicate series: {line}"
        );
        e.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    let without_samples: Vec<&String> = e
        .types
        .keys()
        .filter(|f| {
            !e.samples
                .iter()
                .any(|s| family_of(&s.name, &e.types) == f.as_str())
        })
        .collect();
    assert!(
        without_samples.is_empty(),
        "families without samples: {without_samples:?}"
    );
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reader_refuses_what_it_should() {
        let good =
            "# HELP cma_x_total X.\n# TYPE cma_x_total counter\ncma_x_total{a=\"q\\\"\"} 1\n";
        assert_eq!(parse(good).value("cma_x_total", &[("a", "q\"")]), Some(1.0));
        for bad in [
            "cma_x_total 1\n",
            "# HELP cma_x X.\n# TYPE cma_x counter\ncma_x 1\n",
            "# HELP cma_x_total X.\n# TYPE cma_x_total counter\ncma_x_total 1\ncma_x_total 2\n",
            "# HELP cma_x_total X.\n# TYPE cma_x_total counter\ncma_x_total{a=b} 1\n",
            "# HELP cma_x_total X.\n# TYPE cma_x_total counter\ncma_x_total one\n",
            "# HELP x_total X.\n# TYPE x_total counter\nx_total 1\n",
            "# HELP cma_b Y.\n# TYPE cma_b gauge\n",
        ] {
            assert!(std::panic::catch_unwind(|| parse(bad)).is_err(), "{bad}");
        }
    }
}
