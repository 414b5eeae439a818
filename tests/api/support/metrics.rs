//! `/metrics` parsed: samples matched by exact name and labels, never by substring (a `# HELP`
//! line or a longer name must not count).

use std::collections::BTreeMap;

use super::Client;

#[derive(Debug)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug)]
pub struct Metrics(pub Vec<Sample>);

impl Metrics {
    /// Parse the Prometheus text format; panics on a sample line it cannot read.
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| parse_sample(l).unwrap_or_else(|| panic!("unreadable sample line: {l}")))
            .collect();
        Self(samples)
    }

    /// The samples named exactly `name` whose labels include every pair of `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.0.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
        })
    }

    /// The sum of the matching samples; panics if there is none.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let values: Vec<f64> = self.matching(name, labels).map(|s| s.value).collect();
        assert!(
            !values.is_empty(),
            "no sample {name} with labels {labels:?} in /metrics"
        );
        values.iter().sum()
    }

    /// The sum of the matching samples, 0 if there is none yet.
    pub fn sum_or_zero(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    pub fn has(&self, name: &str) -> bool {
        self.matching(name, &[]).next().is_some()
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' ', '\t'])?;
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(mut s) = rest.strip_prefix('{') {
        loop {
            s = s.trim_start();
            if let Some(after) = s.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = s.find('=')?;
            let key = s[..eq].trim().to_owned();
            let body = s[eq + 1..].strip_prefix('"')?;
            let mut chars = body.char_indices();
            let mut value = String::new();
            let close = loop {
                match chars.next()? {
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    (i, '"') => break i,
                    (_, c) => value.push(c),
                }
            };
            labels.insert(key, value);
            s = &body[close + 1..];
            s = s.strip_prefix(',').unwrap_or(s);
        }
    }
    let value = match rest.split_whitespace().next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

impl Client {
    /// `GET /metrics`, parsed.
    pub async fn metrics(&self) -> Metrics {
        let res = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(res.status(), 200);
        let content_type = res.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .expect("content-type")
            .to_owned();
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        Metrics::parse(&res.text().await.expect("metrics body"))
    }
}

#[test]
fn prometheus_lines_are_parsed_exactly() {
    let m = Metrics::parse(
        "# HELP chat_x_total Things\n# TYPE chat_x_total counter\nchat_x_total 3\n\
         chat_x_total_more 9\nhttp_requests_total{route=\"/a/{name}/b\",status=\"201\"} 2\n\
         http_requests_total{route=\"/a\",status=\"2,01\\\"\"} 5\nh_bucket{le=\"+Inf\"} +Inf\n",
    );
    assert_eq!(m.sum("chat_x_total", &[]), 3.0);
    assert!(!m.has("chat_x"));
    assert_eq!(
        m.sum("http_requests_total", &[("route", "/a/{name}/b")]),
        2.0
    );
    assert_eq!(m.sum("http_requests_total", &[("status", "2,01\"")]), 5.0);
    assert_eq!(m.sum("http_requests_total", &[]), 7.0);
    assert_eq!(
        m.sum_or_zero("http_requests_total", &[("status", "2")]),
        0.0
    );
    assert!(m.sum("h_bucket", &[("le", "+Inf")]).is_infinite());
}
