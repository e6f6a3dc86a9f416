//! Kubernetes label selectors (`matchLabels` + `matchExpressions`), as Cilium and Kubernetes
//! evaluate them.

use std::collections::BTreeMap;

use serde::Deserialize;

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selector {
    #[serde(default)]
    pub match_labels: Labels,
    #[serde(default)]
    pub match_expressions: Vec<Expression>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expression {
    pub key: String,
    pub operator: Operator,
    #[serde(default)]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl Selector {
    /// True for `{}`: selects everything (within the implied namespace, if any).
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| {
                let value = labels.get(&e.key);
                match e.operator {
                    Operator::In => value.is_some_and(|v| e.values.contains(v)),
                    Operator::NotIn => value.is_none_or(|v| !e.values.contains(v)),
                    Operator::Exists => value.is_some(),
                    Operator::DoesNotExist => value.is_none(),
                }
            })
    }

    /// Whether the selector constrains `key` (used for Cilium's implicit namespace).
    pub fn mentions(&self, key: &str) -> bool {
        self.match_labels.contains_key(key) || self.match_expressions.iter().any(|e| e.key == key)
    }

    /// Every key the selector names (`matchLabels` keys, then `matchExpressions` keys).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.match_labels
            .keys()
            .map(String::as_str)
            .chain(self.match_expressions.iter().map(|e| e.key.as_str()))
    }

    /// Whether any key, whatever its source prefix, names `key` (`app`, `k8s:app`, `any:app`).
    pub fn mentions_unsourced(&self, key: &str) -> bool {
        self.keys().any(|k| split_source(k).1 == key)
    }

    /// Whether any key has source `source` (e.g. `reserved`).
    pub fn mentions_source(&self, source: &str) -> bool {
        self.keys().any(|k| split_source(k).0 == Some(source))
    }

    /// Matches labels written with Cilium's sources (`k8s:app` → `web`, `reserved:host` → ``),
    /// as Cilium reads selector keys: `src:key` matches only a label of that source, `any:key`
    /// and a bare `key` match the label of any source.
    pub fn matches_sourced(&self, labels: &Labels) -> bool {
        let values = |key: &str| -> Vec<&String> {
            let (source, key) = split_source(key);
            labels
                .iter()
                .filter(|(k, _)| {
                    let (s, k) = split_source(k);
                    k == key && (matches!(source, None | Some(ANY_SOURCE)) || s == source)
                })
                .map(|(_, v)| v)
                .collect()
        };
        self.match_labels.iter().all(|(k, v)| values(k).contains(&v))
            && self.match_expressions.iter().all(|e| {
                let found = values(&e.key);
                match e.operator {
                    Operator::In => found.iter().any(|v| e.values.contains(v)),
                    Operator::NotIn => found.iter().all(|v| !e.values.contains(v)),
                    Operator::Exists => !found.is_empty(),
                    Operator::DoesNotExist => found.is_empty(),
                }
            })
    }

    /// Checks the source prefix of every key against Cilium's label sources. `Err` names the
    /// first key whose prefix is not a source (a typo would otherwise select nothing).
    pub fn validate_sources(&self) -> Result<(), String> {
        for key in self.keys() {
            if let (Some(source), _) = split_source(key)
                && !SOURCES.contains(&source)
            {
                return Err(format!(
                    "label key {key:?}: unknown source prefix {source:?} (Cilium's sources: {})",
                    SOURCES.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// Keys whose source no endpoint of the sensor carries (`container:`, `unspec:`, ...):
    /// valid for Cilium, but they select nothing here.
    pub fn foreign_source_keys(&self) -> Vec<&str> {
        self.keys()
            .filter(|k| {
                split_source(k)
                    .0
                    .is_some_and(|s| ![ANY_SOURCE, K8S_SOURCE, RESERVED_SOURCE].contains(&s))
            })
            .collect()
    }

    /// Rejects keys with a source prefix: a NetworkPolicy is a Kubernetes object, whose label
    /// keys (a qualified name with an optional DNS prefix) cannot hold `:`.
    pub fn validate_plain_keys(&self) -> Result<(), String> {
        match self.keys().find(|k| k.contains(':')) {
            Some(key) => Err(format!(
                "label key {key:?} is not a valid Kubernetes label key (no `:`; source prefixes \
                 such as `k8s:` belong to CiliumNetworkPolicy)"
            )),
            None => Ok(()),
        }
    }

    /// Validates operator/values combinations, as the API server does.
    pub fn validate(&self) -> Result<(), String> {
        for e in &self.match_expressions {
            match e.operator {
                Operator::In | Operator::NotIn if e.values.is_empty() => {
                    return Err(format!(
                        "matchExpressions key {:?}: {:?} needs values",
                        e.key, e.operator
                    ));
                }
                Operator::Exists | Operator::DoesNotExist if !e.values.is_empty() => {
                    return Err(format!(
                        "matchExpressions key {:?}: {:?} takes no values",
                        e.key, e.operator
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Cilium's label source for "any source" (a bare key means the same).
pub const ANY_SOURCE: &str = "any";
/// Source of labels that come from Kubernetes (pod labels and the labels Cilium derives).
pub const K8S_SOURCE: &str = "k8s";
/// Source of Cilium's reserved identities' labels (`reserved:host`, `reserved:world`, ...).
pub const RESERVED_SOURCE: &str = "reserved";
/// Cilium's label sources (pkg/labels): a key `source:name` with another prefix is an error.
pub const SOURCES: &[&str] = &[
    ANY_SOURCE,
    K8S_SOURCE,
    RESERVED_SOURCE,
    "container",
    "unspec",
    "cni",
    "cidr",
    "cidrgroup",
    "fqdn",
    "node",
];

/// Splits `source:key` at the first `:`; a key without one has no source (Cilium: `any`).
pub fn split_source(key: &str) -> (Option<&str>, &str) {
    match key.split_once(':') {
        Some((source, rest)) => (Some(source), rest),
        None => (None, key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn match_labels_and_expressions() {
        let s: Selector = serde_yaml_ng::from_str(
            "matchLabels: {app: db}\nmatchExpressions:\n- {key: tier, operator: In, values: [a, b]}\n- {key: canary, operator: DoesNotExist}\n",
        )
        .expect("selector");
        assert!(s.matches(&labels(&[("app", "db"), ("tier", "a")])));
        assert!(!s.matches(&labels(&[("app", "db"), ("tier", "c")])));
        assert!(!s.matches(&labels(&[("app", "db"), ("tier", "a"), ("canary", "1")])));
        assert!(!s.matches(&labels(&[("tier", "a")])));
        assert!(Selector::default().matches(&labels(&[("x", "y")])));
    }

    #[test]
    fn not_in_matches_absent_key() {
        let s: Selector = serde_yaml_ng::from_str(
            "matchExpressions: [{key: env, operator: NotIn, values: [prod]}]",
        )
        .expect("selector");
        assert!(s.matches(&labels(&[])));
        assert!(!s.matches(&labels(&[("env", "prod")])));
    }

    #[test]
    fn sourced_keys_match_as_cilium_reads_them() {
        let pod = labels(&[("k8s:app", "web"), ("k8s:io.kubernetes.pod.namespace", "shop")]);
        let host = labels(&[("reserved:host", "")]);
        for yaml in [
            "matchLabels: {app: web}",
            "matchLabels: {\"k8s:app\": web}",
            "matchLabels: {\"any:app\": web}",
            "matchLabels: {\"k8s:io.kubernetes.pod.namespace\": shop}",
            "matchExpressions: [{key: \"k8s:app\", operator: In, values: [web]}]",
            "matchExpressions: [{key: \"reserved:host\", operator: DoesNotExist}]",
        ] {
            let s: Selector = serde_yaml_ng::from_str(yaml).expect("selector");
            assert!(s.validate_sources().is_ok(), "{yaml}");
            assert!(s.matches_sourced(&pod), "{yaml}");
        }
        for yaml in [
            "matchLabels: {\"container:app\": web}",
            "matchLabels: {\"reserved:app\": web}",
            "matchExpressions: [{key: \"any:app\", operator: NotIn, values: [web]}]",
        ] {
            let s: Selector = serde_yaml_ng::from_str(yaml).expect("selector");
            assert!(!s.matches_sourced(&pod), "{yaml}");
        }
        let s: Selector =
            serde_yaml_ng::from_str("matchLabels: {\"reserved:host\": \"\"}").expect("s");
        assert!(s.matches_sourced(&host) && !s.matches_sourced(&pod));
        let s: Selector = serde_yaml_ng::from_str("matchLabels: {\"k8z:app\": web}").expect("s");
        assert!(s.validate_sources().is_err_and(|e| e.contains("k8z")));
        assert!(s.validate_plain_keys().is_err());
    }

    #[test]
    fn invalid_expressions_are_rejected() {
        let s: Selector = serde_yaml_ng::from_str("matchExpressions: [{key: env, operator: In}]")
            .expect("parses");
        assert!(s.validate().is_err());
    }
}
