//! Reading metric names out of PromQL, without a PromQL parser.

use std::collections::BTreeSet;

/// PromQL keywords that are followed by a parenthesised list of label names.
const LABEL_LIST_KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Other PromQL keywords and literals that look like identifiers.
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
];

/// PromQL's aggregation operators and functions (Prometheus 3).
const FUNCTIONS: &[&str] = &[
    // aggregations
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    // functions
    "abs",
    "absent",
    "absent_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "days_in_month",
    "delta",
    "deriv",
    "double_exponential_smoothing",
    "exp",
    "floor",
    "histogram_avg",
    "histogram_count",
    "histogram_fraction",
    "histogram_quantile",
    "histogram_stddev",
    "histogram_stdvar",
    "histogram_sum",
    "holt_winters",
    "hour",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "ln",
    "log2",
    "log10",
    "minute",
    "month",
    "predict_linear",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sort",
    "sort_desc",
    "sort_by_label",
    "sort_by_label_desc",
    "time",
    "timestamp",
    "vector",
    "year",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "quantile_over_time",
    "stddev_over_time",
    "stdvar_over_time",
    "last_over_time",
    "present_over_time",
    "mad_over_time",
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atanh",
    "cos",
    "cosh",
    "sin",
    "sinh",
    "tan",
    "tanh",
    "deg",
    "pi",
    "rad",
    // `@ start()` / `@ end()` modifiers
    "start",
    "end",
];

/// What a PromQL expression refers to.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Refs {
    pub(crate) metrics: BTreeSet<String>,
    pub(crate) functions: BTreeSet<String>,
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c == b':'
}

fn is_ident(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit()
}

/// The index just past the string literal that opens at `at`.
pub(crate) fn skip_string(b: &[u8], at: usize) -> Result<usize, String> {
    let quote = b[at];
    let mut i = at + 1;
    while i < b.len() {
        match b[i] {
            b'\\' if quote != b'`' => i += 2,
            c if c == quote => return Ok(i + 1),
            _ => i += 1,
        }
    }
    Err(format!("unterminated string at byte {at}"))
}

/// The index just past the `close` that ends the group opening at `at`,
/// stepping over string literals (a label value may hold `}` or `)`).
fn skip_group(b: &[u8], at: usize, close: u8) -> Result<usize, String> {
    let mut i = at + 1;
    while i < b.len() {
        match b[i] {
            b'"' | b'\'' | b'`' => i = skip_string(b, i)?,
            c if c == close => return Ok(i + 1),
            _ => i += 1,
        }
    }
    Err(format!("unclosed {:?} at byte {at}", b[at] as char))
}

fn next_non_space(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// Reads the metric names and the functions out of a PromQL expression.
///
/// A small tokenizer, not a parser: it skips string literals, label matchers
/// `{...}`, range and subquery selectors `[...]`, comments, numbers and
/// Grafana variables (`$__rate_interval`), and the label lists after `by`,
/// `without`, `on`, `ignoring`, `group_left` and `group_right`. Of the
/// identifiers left, one followed by `(` is a function (and must be a known
/// one), a keyword is skipped, and anything else is a metric name.
pub(crate) fn promql_refs(expr: &str) -> Result<Refs, String> {
    let b = expr.as_bytes();
    let mut refs = Refs::default();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if matches!(c, b'"' | b'\'' | b'`') {
            i = skip_string(b, i)?;
        } else if c == b'{' {
            i = skip_group(b, i, b'}')?;
        } else if c == b'[' {
            i = skip_group(b, i, b']')?;
        } else if c == b'#' {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'$' {
            i += 1;
            if b.get(i) == Some(&b'{') {
                i = skip_group(b, i, b'}')?;
            }
            while i < b.len() && is_ident(b[i]) {
                i += 1;
            }
        } else if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            // 0.05, 86400, 1e3, 0x1f, and durations such as 5m after `offset`.
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_') {
                i += 1;
            }
        } else if is_ident_start(c) {
            let start = i;
            while i < b.len() && is_ident(b[i]) {
                i += 1;
            }
            let word = &expr[start..i];
            let after = next_non_space(b, i);
            // `sum by (pod) (x)`: an aggregation with its grouping first.
            let grouped = ["by", "without"].iter().any(|k| {
                b[after..].starts_with(k.as_bytes())
                    && !b.get(after + k.len()).copied().is_some_and(is_ident)
            });
            let paren = b.get(after) == Some(&b'(');
            if LABEL_LIST_KEYWORDS.contains(&word) {
                // `group_left` may stand without a list; the others may not.
                if paren {
                    i = skip_group(b, after, b')')?;
                } else if !word.starts_with("group_") {
                    return Err(format!("`{word}` without a label list"));
                }
            } else if KEYWORDS.contains(&word) {
            } else if paren || grouped {
                if !FUNCTIONS.contains(&word) {
                    return Err(format!("unknown PromQL function `{word}`"));
                }
                refs.functions.insert(word.to_string());
            } else {
                refs.metrics.insert(word.to_string());
            }
        } else {
            i += 1;
        }
    }
    Ok(refs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(expr: &str) -> Vec<String> {
        promql_refs(expr).unwrap().metrics.into_iter().collect()
    }

    #[test]
    fn promql_metric_names_are_read_past_labels_ranges_strings_and_keywords() {
        assert_eq!(
            names(
                r#"histogram_quantile(0.99, sum by (le, result) (rate(a_bucket{result="is}sued",le!=""}[$__rate_interval])))"#
            ),
            ["a_bucket"]
        );
        assert_eq!(
            names(
                "sum(rate(x_total[5m] offset 1h)) by (pod) / on (pod) group_left (ns) y > bool 0.5"
            ),
            ["x_total", "y"]
        );
        assert_eq!(
            names(
                "min without (instance, pod) (c) - time() < 30 * 86400 and absent(d) or e unless f"
            ),
            ["c", "d", "e", "f"]
        );
        assert_eq!(
            names("(g > 0) - time() < 1.2e3 # trailing comment naming h"),
            ["g"]
        );
        assert_eq!(
            names(r#"label_replace(i, "dst", "$1", "src", "(.*)") * on() group_left j"#),
            ["i", "j"]
        );
        assert_eq!(names("rate(ns:k:rate5m[1h:5m])"), ["ns:k:rate5m"]);
    }

    #[test]
    fn promql_with_unknown_functions_or_broken_syntax_is_an_error() {
        assert!(promql_refs("rat(x[5m])").is_err());
        assert!(promql_refs(r#"x{a="b}"#).is_err());
        assert!(promql_refs("sum by pod (x)").is_err());
    }
}
