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
    fn invalid_expressions_are_rejected() {
        let s: Selector = serde_yaml_ng::from_str("matchExpressions: [{key: env, operator: In}]")
            .expect("parses");
        assert!(s.validate().is_err());
    }
}
