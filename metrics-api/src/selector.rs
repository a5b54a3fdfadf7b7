//! Kubernetes label selectors in their string form (`app=web,tier in (a,b),!canary`), parsed and
//! matched exactly as `k8s.io/apimachinery/pkg/labels` does (`labels.Parse`, `Requirement.Matches`,
//! `Selector.String`): the same lexer, the same grammar, the same key and value validation.
//!
//! The metrics API takes two of them: `labelSelector` (which pods) and `metricLabelSelector`
//! (which series of a metric). A malformed selector is the client's error: 400 BadRequest.

use std::{collections::BTreeMap, fmt};

use super::types::{LabelSelector, LabelSelectorOperator, LabelSelectorRequirement};

mod names;
mod parser;

use parser::Parser;

/// How a [`Requirement`] relates its key to its values (`selection.Operator`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operator {
    /// `key=value`
    Equals,
    /// `key==value`
    DoubleEquals,
    /// `key!=value`: the key is absent or has another value.
    NotEquals,
    /// `key in (a,b)`
    In,
    /// `key notin (a,b)`: the key is absent or has none of the values.
    NotIn,
    /// `key`
    Exists,
    /// `!key`
    DoesNotExist,
    /// `key>1`: the key's value is an integer greater than the value.
    GreaterThan,
    /// `key<1`: the key's value is an integer less than the value.
    LessThan,
}

impl Operator {
    /// The operator's name in `k8s.io/apimachinery/pkg/selection`.
    pub fn as_str(self) -> &'static str {
        match self {
            Operator::Equals => "=",
            Operator::DoubleEquals => "==",
            Operator::NotEquals => "!=",
            Operator::In => "in",
            Operator::NotIn => "notin",
            Operator::Exists => "exists",
            Operator::DoesNotExist => "!",
            Operator::GreaterThan => "gt",
            Operator::LessThan => "lt",
        }
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One comma-separated term of a selector. Its values are sorted and free of duplicates, as
/// `labels.NewRequirement` receives them from the parser's string set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    key: String,
    operator: Operator,
    values: Vec<String>,
}

impl Requirement {
    /// The one value this requirement pins its key to (`k=v`, `k==v`, `k in (v)`), if any.
    pub fn exact_value(&self) -> Option<&str> {
        match (self.operator, self.values.as_slice()) {
            (Operator::Equals | Operator::DoubleEquals | Operator::In, [value]) => Some(value),
            _ => None,
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// `Requirement.Matches`.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In | Operator::Equals | Operator::DoubleEquals => {
                value.is_some_and(|v| self.values.contains(v))
            }
            Operator::NotIn | Operator::NotEquals => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                let (Some(value), [bound]) = (value, self.values.as_slice()) else {
                    return false;
                };
                let (Ok(value), Ok(bound)) = (value.parse::<i64>(), bound.parse::<i64>()) else {
                    return false;
                };
                if self.operator == Operator::GreaterThan {
                    value > bound
                } else {
                    value < bound
                }
            }
        }
    }
}

impl fmt::Display for Requirement {
    /// `Requirement.String`: `!key`, `key`, `key=v`, `key in (a,b)`, `key>1`, ...
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let operator = match self.operator {
            Operator::DoesNotExist => return write!(f, "!{}", self.key),
            Operator::Exists => return f.write_str(&self.key),
            Operator::Equals => "=",
            Operator::DoubleEquals => "==",
            Operator::NotEquals => "!=",
            Operator::In => " in ",
            Operator::NotIn => " notin ",
            Operator::GreaterThan => ">",
            Operator::LessThan => "<",
        };
        let values = self.values.join(",");
        if matches!(self.operator, Operator::In | Operator::NotIn) {
            write!(f, "{}{operator}({values})", self.key)
        } else {
            write!(f, "{}{operator}{values}", self.key)
        }
    }
}

/// A parsed label selector: the AND of its requirements, sorted by key. The empty selector
/// matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

impl Selector {
    /// The selector that matches every label set (`labels.Everything()`).
    pub fn everything() -> Self {
        Self::default()
    }

    /// `labels.Parse`: the empty string (or only whitespace) is [`Selector::everything`].
    pub fn parse(selector: &str) -> Result<Self, SelectorError> {
        let mut requirements = Parser::new(selector).parse()?;
        // Go sorts by key; a stable sort keeps equal keys in their written order as Go's
        // insertion sort does for selectors of this size.
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Self { requirements })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether every requirement matches `labels`.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// `Selector.RequiresExactMatch`: the one value the selector requires for `key`, if any.
    #[cfg(test)]
    pub fn requires_exact_match(&self, key: &str) -> Option<&str> {
        self.requirements
            .iter()
            .find(|r| r.key == key)?
            .exact_value()
    }

    /// The structured form, as `metav1.ParseToLabelSelector(selector.String())` builds it for a
    /// metric's `selector` field: `=`/`==` become `matchLabels`, the rest `matchExpressions`.
    ///
    /// One deliberate difference: Go rejects `!=` here ("is not a valid label selector
    /// operator"), which makes custom-metrics adapters answer 500 to a valid query; `key!=v`
    /// means exactly `key notin (v)`, so that is what it becomes. `>`/`<` have no structured
    /// form and are an error, as in Go.
    pub fn to_label_selector(&self) -> Result<LabelSelector, SelectorError> {
        let mut selector = LabelSelector::default();
        for requirement in &self.requirements {
            let operator = match requirement.operator {
                Operator::Equals | Operator::DoubleEquals => {
                    if let [value] = requirement.values.as_slice() {
                        selector
                            .match_labels
                            .insert(requirement.key.clone(), value.clone());
                    }
                    continue;
                }
                Operator::In => LabelSelectorOperator::In,
                Operator::NotIn | Operator::NotEquals => LabelSelectorOperator::NotIn,
                Operator::Exists => LabelSelectorOperator::Exists,
                Operator::DoesNotExist => LabelSelectorOperator::DoesNotExist,
                Operator::GreaterThan | Operator::LessThan => {
                    return Err(SelectorError::NoStructuredForm {
                        operator: requirement.operator,
                    });
                }
            };
            selector.match_expressions.push(LabelSelectorRequirement {
                key: requirement.key.clone(),
                operator,
                values: requirement.values.clone(),
            });
        }
        Ok(selector)
    }
}

impl fmt::Display for Selector {
    /// `Selector.String`: the canonical form, requirements sorted by key, joined by `,`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, requirement) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{requirement}")?;
        }
        Ok(())
    }
}

/// Why a selector string is not a selector. The messages follow `labels.Parse`'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// A token where the grammar wants another.
    #[error("found '{found}', expected: {expected}")]
    Unexpected {
        found: String,
        expected: &'static str,
    },
    /// Go words this one without a comma.
    #[error("found '{found}' expected: '('")]
    NoOpenParenthesis { found: String },
    /// A malformed requirement; `labels.Parse` says "unable to parse requirement".
    #[error("unable to parse requirement: {0}")]
    Requirement(Box<SelectorError>),
    #[error("invalid label key \"{key}\": {problem}")]
    InvalidKey { key: String, problem: String },
    #[error("invalid label value \"{value}\" for key \"{key}\": {problem}")]
    InvalidValue {
        key: String,
        value: String,
        problem: String,
    },
    #[error("for 'in', 'notin' operators, values set can't be empty (key \"{key}\")")]
    EmptyValueSet { key: String },
    #[error(
        "for 'Gt', 'Lt' operators, the value must be an integer (key \"{key}\", value \"{value}\")"
    )]
    NotAnInteger { key: String, value: String },
    /// Several problems in one requirement, as Go aggregates them.
    #[error("[{}]", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))]
    Several(Vec<SelectorError>),
    #[error("\"{operator}\" isn't supported in label selectors")]
    NoStructuredForm { operator: Operator },
}

#[cfg(test)]
mod tests;
