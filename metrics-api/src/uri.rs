//! Request paths and query strings read as Go's `net/url` reads them: the path is
//! percent-decoded before it is split into segments (the HPA sends `pods/%2A/...`), and a query
//! parameter's first value wins.

/// A path or query with a broken `%` escape, or one that does not decode to UTF-8.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid URL escape or encoding in {input:?}")]
pub struct InvalidEscape {
    pub input: String,
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

fn decode(input: &str, plus_is_space: bool) -> Result<String, InvalidEscape> {
    let invalid = || InvalidEscape {
        input: input.to_owned(),
    };
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        match byte {
            b'%' => {
                let high = bytes.get(i + 1).copied().and_then(hex_value);
                let low = bytes.get(i + 2).copied().and_then(hex_value);
                let (Some(high), Some(low)) = (high, low) else {
                    return Err(invalid());
                };
                out.push(high << 4 | low);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| invalid())
}

/// `url.PathUnescape`: `%XX` decoded, `+` kept.
pub fn decode_path(path: &str) -> Result<String, InvalidEscape> {
    decode(path, false)
}

/// The segments of a decoded path, as the apiserver's `splitPath`: leading and trailing `/`
/// trimmed, then split on `/`; the root is no segments.
pub fn segments(path: &str) -> Vec<&str> {
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty() {
        Vec::new()
    } else {
        trimmed.split('/').collect()
    }
}

/// The value of query parameter `name`: its first occurrence, decoded (`+` is a space). Pairs
/// with broken escapes are skipped, as `url.URL.Query()` skips them.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            Some((decode(key, true).ok()?, decode(value, true).ok()?))
        })
        .find(|(key, _)| key == name)
        .map(|(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_decode_before_splitting() {
        assert_eq!(decode_path("/a/%2A/b%20c").as_deref(), Ok("/a/*/b c"));
        assert_eq!(decode_path("/a+b").as_deref(), Ok("/a+b"));
        assert!(decode_path("/a%2").is_err());
        assert!(decode_path("/a%zz").is_err());
        assert!(decode_path("/%ff").is_err(), "not UTF-8");
        assert_eq!(segments("/apis/g/v/"), vec!["apis", "g", "v"]);
        assert_eq!(segments("/"), Vec::<&str>::new());
        assert_eq!(segments("/a//b"), vec!["a", "", "b"]);
    }

    #[test]
    fn first_query_value_wins() {
        let query = Some("labelSelector=app%3Dweb&labelSelector=x&metricLabelSelector=a+b");
        assert_eq!(
            query_param(query, "labelSelector").as_deref(),
            Some("app=web")
        );
        assert_eq!(
            query_param(query, "metricLabelSelector").as_deref(),
            Some("a b")
        );
        assert_eq!(query_param(query, "missing"), None);
        assert_eq!(query_param(None, "labelSelector"), None);
        assert_eq!(
            query_param(Some("labelSelector"), "labelSelector").as_deref(),
            Some("")
        );
        assert_eq!(
            query_param(Some("labelSelector=%zz&labelSelector=ok"), "labelSelector").as_deref(),
            Some("ok"),
            "a broken pair is skipped"
        );
    }
}
