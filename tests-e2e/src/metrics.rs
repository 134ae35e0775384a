//! A service's `/metrics`, read through nginx, for tests that count what happened.

use std::collections::BTreeMap;

use crate::Stack;

/// `/metrics` parsed into (name, labels) → value.
pub type Samples = BTreeMap<(String, BTreeMap<String, String>), f64>;

pub async fn scrape(stack: &Stack, path: &str) -> Samples {
    let resp = stack.client().get(stack.url(path)).send().await.expect("GET /metrics");
    assert_eq!(resp.status(), 200, "{path}");
    let text = resp.text().await.expect("metrics text");
    let mut samples = Samples::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let Some((series, number)) = line.rsplit_once(' ') else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split("\",")
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim_matches('"').to_string()))
            .collect();
        if let Ok(number) = number.parse() {
            samples.insert((name.to_string(), labels), number);
        }
    }
    samples
}

pub fn value(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let labels: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    samples.get(&(name.to_string(), labels)).copied().unwrap_or(0.0)
}

/// How far one sample moved from `before` to `after`.
pub fn moved(after: &Samples, before: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(after, name, labels) - value(before, name, labels)
}
