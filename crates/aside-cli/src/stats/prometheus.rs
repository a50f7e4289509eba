//! Reads aside's series from a Prometheus text page (exposition format
//! 0.0.4) and sums them per cache.

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};

/// One sample: a metric name, its labels, its value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find_map(|(n, v)| (n == name).then_some(v.as_str()))
    }
}

/// Parses the samples of a text page; comments and blank lines are skipped.
pub(crate) fn parse(text: &str) -> anyhow::Result<Vec<Sample>> {
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        samples.push(sample(line).with_context(|| format!("line {}: {line:?}", n + 1))?);
    }
    Ok(samples)
}

fn sample(line: &str) -> anyhow::Result<Sample> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .context("no value")?;
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(inner)?;
        labels = parsed;
        rest = after;
    }
    let value = rest.split_whitespace().next().context("no value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().with_context(|| format!("bad value {v:?}"))?,
    };
    Ok(Sample {
        name,
        labels,
        value,
    })
}

/// `name="value",...}` (the `{` already taken): the labels, and what
/// follows the `}`.
fn parse_labels(mut s: &str) -> anyhow::Result<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Ok((labels, after));
        }
        let Some((name, after)) = s.split_once('=') else {
            bail!("label without '='");
        };
        let Some(after) = after.trim_start().strip_prefix('"') else {
            bail!("label value not quoted");
        };
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => bail!("unterminated label value"),
                },
                Some((_, c)) => value.push(c),
                None => bail!("unterminated label value"),
            }
        };
        labels.push((name.trim().to_owned(), value));
        s = after[end + 1..].trim_start();
        s = s.strip_prefix(',').unwrap_or(s);
    }
}

/// One cache's figures, summed over its levels.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct CacheFigures {
    pub hits: f64,
    pub misses: f64,
    pub stale: f64,
    pub negative: f64,
    pub loads: f64,
    pub load_errors: f64,
    pub load_seconds_sum: f64,
    pub load_seconds_count: f64,
    pub backend_errors: f64,
    pub backend_timeouts: f64,
    pub invalidated_keys: f64,
    pub invalidated_tags: f64,
    pub invalidated_namespaces: f64,
    pub stale_served: f64,
    pub fail_safe_served: f64,
    pub invalidations_queued: f64,
    pub loads_in_flight: f64,
    pub backend_breaker_open: bool,
    pub loader_breaker_open: bool,
}

impl CacheFigures {
    /// Reads answered from the cache (negative entries too) among those
    /// that were hits or misses, as `Stats::hit_ratio`.
    pub fn hit_ratio(&self) -> Option<f64> {
        let hits = self.hits + self.negative;
        let total = hits + self.misses;
        (total > 0.0).then(|| hits / total)
    }

    /// The mean loader run time in seconds, if a load was recorded.
    pub fn mean_load_seconds(&self) -> Option<f64> {
        (self.load_seconds_count > 0.0).then(|| self.load_seconds_sum / self.load_seconds_count)
    }

    fn add(&mut self, s: &Sample) {
        let v = s.value;
        match (s.name.as_str(), s.label("result"), s.label("kind")) {
            ("aside_requests_total", Some("hit"), _) => self.hits += v,
            ("aside_requests_total", Some("miss"), _) => self.misses += v,
            ("aside_requests_total", Some("stale"), _) => self.stale += v,
            ("aside_requests_total", Some("negative"), _) => self.negative += v,
            ("aside_loads_total", ..) => self.loads += v,
            ("aside_load_errors_total", ..) => self.load_errors += v,
            ("aside_load_duration_seconds_sum", ..) => self.load_seconds_sum += v,
            ("aside_load_duration_seconds_count", ..) => self.load_seconds_count += v,
            ("aside_backend_errors_total", ..) => self.backend_errors += v,
            ("aside_backend_timeouts_total", ..) => self.backend_timeouts += v,
            ("aside_invalidations_total", _, Some("key")) => self.invalidated_keys += v,
            ("aside_invalidations_total", _, Some("tag")) => self.invalidated_tags += v,
            ("aside_invalidations_total", _, Some("namespace")) => {
                self.invalidated_namespaces += v;
            }
            ("aside_stale_served_total", ..) => self.stale_served += v,
            ("aside_fail_safe_served_total", ..) => self.fail_safe_served += v,
            ("aside_invalidations_queued", ..) => self.invalidations_queued += v,
            ("aside_loads_in_flight", ..) => self.loads_in_flight += v,
            ("aside_breaker_open", ..) => match s.label("breaker") {
                Some("backend") => self.backend_breaker_open |= v > 0.0,
                Some("loader") => self.loader_breaker_open |= v > 0.0,
                _ => {}
            },
            _ => {}
        }
    }
}

/// aside's figures per cache (the `cache` label, its namespace), for the
/// caches named `only` (all when `None`).
pub(crate) fn per_cache(samples: &[Sample], only: Option<&str>) -> BTreeMap<String, CacheFigures> {
    let mut caches: BTreeMap<String, CacheFigures> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name.starts_with("aside_")) {
        let Some(cache) = s.label("cache") else {
            continue;
        };
        if only.is_some_and(|o| o != cache) {
            continue;
        }
        caches.entry(cache.to_owned()).or_default().add(s);
    }
    caches
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# TYPE aside_requests_total counter
aside_requests_total{cache="shop",level="redis",result="hit"} 90
aside_requests_total{cache="shop",level="redis",result="miss"} 10
aside_requests_total{cache="shop",level="redis",result="negative"} 5
aside_requests_total{cache="shop",level="redis",result="stale"} 1
aside_requests_total{cache="odd \"name\", with\n",level="memory",result="hit"} 3 1700000000000
aside_loads_total{cache="shop",level="redis"} 10
aside_invalidations_total{cache="shop",level="redis",kind="tag"} 2
aside_breaker_open{cache="shop",level="redis",breaker="loader"} 1
aside_load_duration_seconds{cache="shop",quantile="0.5"} 0.002
aside_load_duration_seconds_sum{cache="shop"} 0.05
aside_load_duration_seconds_count{cache="shop"} 10
other_metric 1e3
"#;

    #[test]
    fn a_page_is_read_per_cache() {
        let samples = match parse(PAGE) {
            Ok(s) => s,
            Err(e) => panic!("{e:#}"),
        };
        assert_eq!(samples.len(), 12);
        let caches = per_cache(&samples, None);
        assert_eq!(caches.len(), 2);
        let shop = &caches["shop"];
        assert_eq!(
            (shop.hits, shop.misses, shop.negative, shop.stale),
            (90.0, 10.0, 5.0, 1.0)
        );
        assert_eq!(shop.hit_ratio(), Some(95.0 / 105.0));
        assert_eq!(shop.loads, 10.0);
        assert_eq!(shop.invalidated_tags, 2.0);
        assert!(shop.loader_breaker_open && !shop.backend_breaker_open);
        assert_eq!(shop.mean_load_seconds(), Some(0.005));
        assert_eq!(caches["odd \"name\", with\n"].hits, 3.0);
        assert_eq!(per_cache(&samples, Some("shop")).len(), 1);
        assert!(per_cache(&samples, Some("none")).is_empty());
    }

    #[test]
    fn malformed_lines_are_errors_with_their_line() {
        for bad in [
            "aside_x{cache=\"a\" 1",
            "aside_x{cache=a} 1",
            "aside_x",
            "aside_x abc",
        ] {
            match parse(bad) {
                Ok(s) => panic!("{bad:?} parsed as {s:?}"),
                Err(e) => assert!(format!("{e:#}").contains("line 1"), "{e:#}"),
            }
        }
    }
}
