//! Table tests against `labels.Parse` semantics (k8s.io/apimachinery `pkg/labels/selector.go`
//! and its `selector_test.go` cases): what parses, its canonical `String()`, what matches.

use std::collections::BTreeMap;

use super::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn valid_selectors_parse_to_their_canonical_string() {
    let cases = [
        ("", ""),
        ("   ", ""),
        ("x=a", "x=a"),
        ("x==a", "x==a"),
        ("x!=a", "x!=a"),
        ("x = a", "x=a"),
        ("x\t==\ta", "x==a"),
        ("y!=b,x=a", "x=a,y!=b"),
        ("x=a,y!=b", "x=a,y!=b"),
        ("x in (a,b)", "x in (a,b)"),
        ("x in (b,a,a)", "x in (a,b)"),
        ("x in(a)", "x in (a)"),
        ("x notin (a)", "x notin (a)"),
        ("x", "x"),
        ("!x", "!x"),
        ("!x,y", "!x,y"),
        ("x=", "x="),
        ("x==,y=b", "x==,y=b"),
        ("x>1", "x>1"),
        ("x<10,x>1", "x<10,x>1"),
        // The example of labels.Parse's doc comment; `()` is the set of the empty value.
        (
            "x in (foo,,baz),y,z notin ()",
            "x in (,baz,foo),y,z notin ()",
        ),
        ("x in (a,)", "x in (,a)"),
        ("x in (,a)", "x in (,a)"),
        ("example.com/app=web", "example.com/app=web"),
        (
            "app.kubernetes.io/name in (web)",
            "app.kubernetes.io/name in (web)",
        ),
        // `in` and `notin` are identifiers where a key or value is expected.
        ("in in (in)", "in in (in)"),
        ("notin=in", "notin=in"),
        ("a-b_c.d=E-f_g.h", "a-b_c.d=E-f_g.h"),
    ];
    for (input, canonical) in cases {
        let selector =
            Selector::parse(input).unwrap_or_else(|e| panic!("{input:?} must parse: {e}"));
        assert_eq!(selector.to_string(), canonical, "{input:?}");
        // The canonical form parses to the same selector.
        assert_eq!(
            Selector::parse(canonical).as_ref(),
            Ok(&selector),
            "{input:?}"
        );
    }
}

#[test]
fn malformed_selectors_are_rejected_with_the_go_parser_message() {
    let cases = [
        ("x=a,", "found '', expected: identifier after ','"),
        (
            ",x",
            "found ',', expected: !, identifier, or 'end of string'",
        ),
        ("x=a b", "found 'b', expected: ',' or 'end of string'"),
        ("x=a=b", "found '=', expected: ',' or 'end of string'"),
        ("!x=a", "found '=', expected: ',' or 'end of string'"),
        (
            "x in a",
            "unable to parse requirement: found 'a' expected: '('",
        ),
        (
            "x in (a",
            "unable to parse requirement: found '', expected: ',' or ')'",
        ),
        (
            "x in (a b)",
            "unable to parse requirement: found 'b', expected: ',' or ')'",
        ),
        (
            "x in",
            "unable to parse requirement: found '' expected: '('",
        ),
        (
            "x !",
            "unable to parse requirement: found '!', expected: in, notin, =, ==, !=, gt, lt",
        ),
        (
            "x (a)",
            "unable to parse requirement: found '(', expected: in, notin, =, ==, !=, gt, lt",
        ),
        (
            "x=(a)",
            "unable to parse requirement: found '(', expected: identifier",
        ),
        (
            "!",
            "unable to parse requirement: found '', expected: identifier",
        ),
        (
            "=a",
            "found '=', expected: !, identifier, or 'end of string'",
        ),
    ];
    for (input, message) in cases {
        let error = Selector::parse(input).expect_err(input);
        assert_eq!(error.to_string(), message, "{input:?}");
    }
}

#[test]
fn keys_and_values_are_validated_like_label_names() {
    let long = "a".repeat(64);
    let ok_long = "a".repeat(63);
    for input in [
        "-x=a".to_owned(),
        "x-=a".to_owned(),
        "x=-a".to_owned(),
        "x=a-".to_owned(),
        "a/b/c=d".to_owned(),
        "Example.com/a=b".to_owned(),
        "/a=b".to_owned(),
        "a/=b".to_owned(),
        "é=a".to_owned(),
        "x=é".to_owned(),
        format!("{long}=a"),
        format!("x={long}"),
        "x>a".to_owned(),
        "x>-1".to_owned(),
        "x in (a,-b)".to_owned(),
    ] {
        let error = Selector::parse(&input).expect_err(&input);
        assert!(
            error
                .to_string()
                .starts_with("unable to parse requirement: "),
            "{input:?}: {error}"
        );
    }
    for input in [
        format!("{ok_long}=a"),
        format!("x={ok_long}"),
        format!("{}/x=a", "a.".repeat(120) + "b"),
    ] {
        assert!(Selector::parse(&input).is_ok(), "{input:?}");
    }
    let too_long_prefix = format!("{}/x=a", "a".repeat(254));
    assert!(Selector::parse(&too_long_prefix).is_err());
}

#[test]
fn several_problems_in_one_requirement_are_all_reported() {
    let error = Selector::parse("x>a").expect_err("not an integer and fine as a value");
    assert_eq!(
        error,
        SelectorError::Requirement(Box::new(SelectorError::NotAnInteger {
            key: "x".into(),
            value: "a".into()
        }))
    );
    let error = Selector::parse("x>-a").expect_err("neither an integer nor a label value");
    let SelectorError::Requirement(inner) = error else {
        panic!("{error:?}");
    };
    assert!(
        matches!(*inner, SelectorError::Several(ref all) if all.len() == 2),
        "{inner:?}"
    );
}

#[test]
fn matching_follows_requirement_matches() {
    let pod = labels(&[
        ("app", "web"),
        ("tier", "frontend"),
        ("n", "5"),
        ("empty", ""),
    ]);
    let cases = [
        ("", true),
        ("app=web", true),
        ("app==web", true),
        ("app=db", false),
        ("app!=db", true),
        ("app!=web", false),
        ("missing!=x", true),
        ("missing=x", false),
        ("app in (web,db)", true),
        ("app in (db)", false),
        ("app notin (web)", false),
        ("app notin (db)", true),
        ("missing notin (a)", true),
        ("missing in (a)", false),
        ("app", true),
        ("missing", false),
        ("!app", false),
        ("!missing", true),
        ("n>4", true),
        ("n>5", false),
        ("n<6", true),
        ("n<5", false),
        ("app>1", false),
        ("missing>1", false),
        ("empty=", true),
        ("empty in ()", true),
        ("missing in ()", false),
        ("app=web,tier=frontend", true),
        ("app=web,tier=backend", false),
        ("app=web,!canary,tier in (frontend,backend)", true),
    ];
    for (input, expected) in cases {
        let selector = Selector::parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
        assert_eq!(selector.matches(&pod), expected, "{input:?} on {pod:?}");
    }
    assert!(Selector::everything().matches(&BTreeMap::new()));
}

#[test]
fn requires_exact_match_finds_pinned_values() {
    let selector = Selector::parse("app=web,tier in (a),zone in (a,b),x!=y").expect("valid");
    assert_eq!(selector.requires_exact_match("app"), Some("web"));
    assert_eq!(selector.requires_exact_match("tier"), Some("a"));
    assert_eq!(selector.requires_exact_match("zone"), None);
    assert_eq!(selector.requires_exact_match("x"), None);
    assert_eq!(selector.requires_exact_match("missing"), None);
}

#[test]
fn structured_form_is_what_parse_to_label_selector_builds() {
    let selector = Selector::parse("app=web,tier in (b,a),!canary,stage,x!=y").expect("valid");
    let structured = selector.to_label_selector().expect("representable");
    // metav1.LabelSelector: matchLabels for `=`, matchExpressions (in key order) for the rest.
    assert_eq!(
        serde_json::to_string(&structured).expect("serialises"),
        r#"{"matchLabels":{"app":"web"},"matchExpressions":[{"key":"canary","operator":"DoesNotExist"},{"key":"stage","operator":"Exists"},{"key":"tier","operator":"In","values":["a","b"]},{"key":"x","operator":"NotIn","values":["y"]}]}"#
    );
    assert_eq!(
        Selector::parse("n>1")
            .expect("valid")
            .to_label_selector()
            .map_err(|e| e.to_string()),
        Err("\"gt\" isn't supported in label selectors".to_owned())
    );
    assert_eq!(
        serde_json::to_string(&Selector::everything().to_label_selector().expect("empty"))
            .expect("serialises"),
        "{}"
    );
}

#[test]
fn a_nul_byte_ends_the_selector_as_in_go() {
    // The Go lexer reads byte 0 as the end of input.
    assert_eq!(
        Selector::parse("x=a\0,y").map(|s| s.to_string()),
        Ok("x=a,y".to_owned()),
        "inside a token NUL only ends the token"
    );
    assert_eq!(
        Selector::parse("x=a,\0y=b").map(|s| s.to_string()),
        Ok("x=a,y=b".to_owned()),
        "after an operator the lexer swallows the NUL it stopped at"
    );
    assert_eq!(
        Selector::parse("x=a, \0y=b").map_err(|e| e.to_string()),
        Err("found '', expected: identifier after ','".to_owned()),
        "where a token starts, NUL is the end"
    );
}
