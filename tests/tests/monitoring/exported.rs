//! What the code exports: each component's metrics with one series in every
//! family, encoded as Prometheus text, read back into names, types and label
//! names.

use std::collections::BTreeSet;

use super::promql::skip_string;

/// One metric family as a component's registry encodes it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Family {
    pub(crate) component: &'static str,
    pub(crate) name: String,
    pub(crate) kind: String,
    /// Label names on its series (a histogram's `le` left out).
    pub(crate) labels: BTreeSet<String>,
}

impl Family {
    /// The series Prometheus stores for this family (what PromQL can select).
    pub(crate) fn series(&self) -> Vec<String> {
        match self.kind.as_str() {
            "counter" => vec![format!("{}_total", self.name)],
            "histogram" => ["bucket", "sum", "count"]
                .iter()
                .map(|s| format!("{}_{s}", self.name))
                .collect(),
            "info" => vec![format!("{}_info", self.name)],
            _ => vec![self.name.clone()],
        }
    }

    /// The name the README lists: the counter's `_total` series, otherwise
    /// the family name (a histogram's three series share it).
    pub(crate) fn documented(&self) -> String {
        match self.kind.as_str() {
            "counter" => format!("{}_total", self.name),
            _ => self.name.clone(),
        }
    }
}

/// The families in one text exposition: names and types from its
/// `# TYPE <name> <type>` lines, label names from its samples.
pub(crate) fn families(component: &'static str, text: &str) -> Vec<Family> {
    let mut found: Vec<Family> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .map(|rest| {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind), None) = (parts.next(), parts.next(), parts.next()) else {
                panic!("{component}: unexpected TYPE line {rest:?}");
            };
            Family {
                component,
                name: name.to_string(),
                kind: kind.to_string(),
                labels: BTreeSet::new(),
            }
        })
        .collect();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, labels) = sample_labels(line);
        let family = found
            .iter_mut()
            .find(|f| f.series().contains(&series))
            .unwrap_or_else(|| panic!("{component}: sample of no family: {line}"));
        family
            .labels
            .extend(labels.into_iter().filter(|l| l != "le"));
    }
    found
}

/// The series name and label names of one sample line, `name{k="v",...} 1`.
fn sample_labels(line: &str) -> (String, Vec<String>) {
    let Some((name, rest)) = line.split_once('{') else {
        let name = line.split_whitespace().next().unwrap_or_default();
        return (name.to_string(), Vec::new());
    };
    let b = rest.as_bytes();
    let mut labels = Vec::new();
    let mut i = 0;
    while i < b.len() && b[i] != b'}' {
        let eq = rest[i..].find('=').map(|at| i + at).expect("label=value");
        labels.push(rest[i..eq].trim_start_matches(',').to_string());
        i = skip_string(b, eq + 1).expect("a quoted label value");
    }
    (name.to_string(), labels)
}
/// The names registered in a registry, read from its `Debug` form
/// (`Descriptor { name: "...", ... }`), which holds every family, also those
/// with no series that the text encoding leaves out.
fn registered(debug: &str) -> Vec<String> {
    const OPEN: &str = "Descriptor { name: \"";
    debug
        .match_indices(OPEN)
        .map(|(at, _)| {
            let rest = &debug[at + OPEN.len()..];
            rest[..rest.find('"').unwrap()].to_string()
        })
        .collect()
}

/// Every family the three components export, from their real registries:
/// each component's metrics with one series in every family, encoded.
pub(crate) fn exported() -> Vec<Family> {
    let certd = meshlite_certd::metrics::Metrics::with_every_family();
    let injector = meshlite_injector::metrics::Metrics::with_every_family();
    let proxy = meshlite_proxy::metrics::Metrics::with_every_family();
    let encoded = [
        ("certd", certd.encode().unwrap(), format!("{certd:?}")),
        (
            "injector",
            injector.encode().unwrap(),
            format!("{injector:?}"),
        ),
        ("proxy", proxy.encode(), format!("{proxy:?}")),
    ];
    let mut all = Vec::new();
    for (component, text, debug) in &encoded {
        let found = families(component, text);
        let registered = registered(debug);
        assert!(
            !registered.is_empty(),
            "{component}: no `Descriptor {{ name: ... }}` in the registry's Debug form; \
             did prometheus-client change it?"
        );
        let silent: Vec<&String> = registered
            .iter()
            .filter(|r| !found.iter().any(|f| f.name.ends_with(&format!("_{r}"))))
            .collect();
        assert!(
            silent.is_empty() && registered.len() == found.len(),
            "{component} registers {silent:?} but its Metrics::with_every_family() gives them \
             no series, so they are not encoded and this test cannot see them: add a line there"
        );
        all.extend(found);
    }
    all
}

pub(crate) fn exported_series() -> BTreeSet<String> {
    exported().iter().flat_map(Family::series).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_lines_and_samples_give_the_series_and_label_names() {
        let text = "# HELP a A.\n# TYPE a counter\na_total{x=\"1,}\",y=\"\"} 1\n\
                    # TYPE b histogram\nb_bucket{le=\"1.0\",r=\"i\"} 1\nb_count{r=\"i\"} 1\n\
                    # TYPE c gauge\nc 2\n# EOF\n";
        let found = families("x", text);
        let labels: Vec<Vec<&str>> = found
            .iter()
            .map(|f| f.labels.iter().map(String::as_str).collect())
            .collect();
        assert_eq!(labels, [vec!["x", "y"], vec!["r"], vec![]]);
        let series: Vec<String> = found.iter().flat_map(Family::series).collect();
        assert_eq!(series, ["a_total", "b_bucket", "b_sum", "b_count", "c"]);
    }
}
