//! `/metrics` as tests read it: a Prometheus text page scraped from the
//! service, as (name, labels) -> value.

use std::collections::BTreeMap;

use super::Service;

/// Every sample of a Prometheus text page: (name, labels) -> value.
pub fn samples(text: &str) -> BTreeMap<(String, BTreeMap<String, String>), f64> {
    let mut samples = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("series and value");
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let labels = rest
                    .trim_end_matches('}')
                    .split(',')
                    .map(|pair| {
                        let (k, v) = pair.split_once('=').expect("label");
                        (k.to_owned(), v.trim_matches('"').to_owned())
                    })
                    .collect();
                (name, labels)
            }
        };
        samples.insert((name.to_owned(), labels), value.parse().expect("number"));
    }
    samples
}

pub fn value(page: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let key = (
        name.to_owned(),
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    *samples(page)
        .get(&key)
        .unwrap_or_else(|| panic!("no {name}{labels:?} in\n{page}"))
}

pub fn scrape(service: &Service) -> String {
    let (status, body) = service.get("/metrics").expect("/metrics answers");
    assert_eq!(status, 200, "{body}");
    body
}
