//! What a label key and a label value may be (`k8s.io/apimachinery/pkg/util/validation`:
//! `IsQualifiedName`, `IsDNS1123Subdomain`, `IsValidLabelValue`).

use super::SelectorError;

const NAME_MAX_LENGTH: usize = 63;
const DNS_SUBDOMAIN_MAX_LENGTH: usize = 253;

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`: a label name, or a non-empty label value.
fn is_qualified_name_part(s: &str) -> bool {
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// `IsDNS1123Subdomain`: lower-case DNS labels joined by dots, at most 253 characters.
fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= DNS_SUBDOMAIN_MAX_LENGTH
        && s.split('.').all(|label| {
            let bytes = label.as_bytes();
            match (bytes.first(), bytes.last()) {
                (Some(first), Some(last)) => {
                    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
                    alnum(first) && alnum(last) && bytes.iter().all(|b| alnum(b) || *b == b'-')
                }
                _ => false,
            }
        })
}

/// `IsQualifiedName`, the rule for label keys: `[prefix/]name`.
pub(super) fn validate_key(key: &str) -> Result<(), SelectorError> {
    let invalid = |problem: &str| {
        Err(SelectorError::InvalidKey {
            key: key.to_owned(),
            problem: problem.to_owned(),
        })
    };
    let name = match key.split('/').collect::<Vec<_>>().as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                return invalid("prefix part must be non-empty");
            }
            if !is_dns1123_subdomain(prefix) {
                return invalid(
                    "prefix part must be a lowercase RFC 1123 subdomain of at most 253 characters",
                );
            }
            *name
        }
        _ => {
            return invalid(
                "a qualified name must be a name with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
            );
        }
    };
    if name.is_empty() {
        return invalid("name part must be non-empty");
    }
    if name.len() > NAME_MAX_LENGTH {
        return invalid("name part must be no more than 63 characters");
    }
    if !is_qualified_name_part(name) {
        return invalid(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
        );
    }
    Ok(())
}

/// `IsValidLabelValue`: empty, or a qualified name part of at most 63 characters.
pub(super) fn label_value_problem(value: &str) -> Option<String> {
    if value.len() > NAME_MAX_LENGTH {
        return Some("must be no more than 63 characters".to_owned());
    }
    if !value.is_empty() && !is_qualified_name_part(value) {
        return Some(
            "a valid label value must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
                .to_owned(),
        );
    }
    None
}
