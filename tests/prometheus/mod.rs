//! A small reader of Prometheus' text exposition format (version 0.0.4), so the metrics
//! tests check what a scraper would read, not substrings: `# HELP` and `# TYPE` lines, then
//! samples `name{label="value",...} number`. Anything else on a line is a parse error,
//! which fails the test naming the line.
#![allow(dead_code)] // each test binary uses its own subset

use std::collections::{BTreeMap, HashMap};

/// One sample: a metric name, its labels and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A whole scrape: every sample, and each family's declared type.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
    /// Family name -> `counter`, `gauge`, ...
    pub types: HashMap<String, String>,
}

impl Scrape {
    /// Parses `text`; panics naming the first line that is not valid exposition, or a
    /// sample whose family has no `# TYPE` line before it.
    pub fn parse(text: &str) -> Scrape {
        let mut scrape = Scrape::default();
        for line in text.lines() {
            if line.is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix('#') {
                let mut words = comment.trim_start().splitn(3, ' ');
                match (words.next(), words.next(), words.next()) {
                    (Some("TYPE"), Some(name), Some(kind)) => {
                        assert!(valid_name(name), "bad metric name in {line:?}");
                        assert!(
                            ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                            "bad type in {line:?}"
                        );
                        scrape.types.insert(name.to_owned(), kind.to_owned());
                    }
                    (Some("HELP"), Some(name), _) => {
                        assert!(valid_name(name), "bad metric name in {line:?}")
                    }
                    _ => {}
                }
                continue;
            }
            let sample = parse_sample(line).unwrap_or_else(|e| panic!("{e} in {line:?}"));
            assert!(
                scrape.types.contains_key(&sample.name),
                "{} has no # TYPE line before it",
                sample.name
            );
            scrape.samples.push(sample);
        }
        scrape
    }

    /// The value of the sample `name` with exactly `labels`; `None` if there is none.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == wanted)
            .map(|s| s.value)
    }

    /// Like [`Scrape::get`], but panics (showing the scrape) if the sample is missing.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?} in {:#?}", self.samples))
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `name{k="v",...} value` or `name value` (an optional timestamp after the value).
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !valid_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = after;
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest.find('=').ok_or("a label without =")?;
            let key = rest[..eq].trim();
            if !valid_name(key) {
                return Err(format!("bad label name {key:?}"));
            }
            let (value, after) = quoted(&rest[eq + 1..])?;
            labels.insert(key.to_owned(), value);
            rest = after.strip_prefix(',').unwrap_or(after);
        }
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("no value")?;
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().map_err(|_| format!("bad value {v:?}"))?,
    };
    if let Some(timestamp) = fields.next() {
        timestamp
            .parse::<i64>()
            .map_err(|_| format!("bad timestamp {timestamp:?}"))?;
    }
    if fields.next().is_some() {
        return Err("text after the value".into());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// A `"..."` label value with `\\`, `\"` and `\n` escapes; returns it and the rest.
fn quoted(text: &str) -> Result<(String, &str), String> {
    let inner = text
        .strip_prefix('"')
        .ok_or("a label value without quotes")?;
    let mut value = String::new();
    let mut chars = inner.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &inner[i + 1..])),
            '\\' => match chars.next() {
                Some((_, '\\')) => value.push('\\'),
                Some((_, '"')) => value.push('"'),
                Some((_, 'n')) => value.push('\n'),
                other => return Err(format!("bad escape {other:?}")),
            },
            c => value.push(c),
        }
    }
    Err("an unterminated label value".into())
}
