//! The canonical strings apimachinery writes for `NewMilliQuantity(m, DecimalSI)` (worked by hand
//! from `int64Amount.AsCanonicalBytes`: strip factors of ten, lower the exponent to a multiple
//! of three), and parsing back as `ParseQuantity(...).MilliValue()` does.

use super::*;

#[test]
fn floats_become_canonical_milli_quantities() {
    let cases: [(f64, &str); 26] = [
        (25.5, "25500m"),
        (10.0, "10"),
        (0.0125, "12m"),
        (0.0, "0"),
        (-0.0, "0"),
        (0.5, "500m"),
        (1.5, "1500m"),
        (50.0, "50"),
        (100.0, "100"),
        (999.0, "999"),
        (1000.0, "1k"),
        (1500.0, "1500"),
        (2000.0, "2k"),
        (2_000_000.0, "2M"),
        (1e9, "1G"),
        (1e12, "1T"),
        (1e15, "1P"),
        (0.001, "1m"),
        (0.0009, "0"),
        (0.29, "290m"),
        (12.34, "12340m"),
        (123_456.789, "123456789m"),
        (33.333_333_333, "33333m"),
        (-2.5, "-2500m"),
        (-3000.0, "-3k"),
        (0.066, "66m"),
    ];
    for (value, expected) in cases {
        let quantity = Quantity::from_f64(value).expect("finite and in range");
        assert_eq!(quantity.to_string(), expected, "{value}");
    }
}

#[test]
fn truncation_is_toward_zero_like_int64_conversion() {
    assert_eq!(Quantity::from_f64(0.0019).map(Quantity::milli), Ok(1));
    assert_eq!(Quantity::from_f64(-0.0019).map(Quantity::milli), Ok(-1));
    assert_eq!(Quantity::from_f64(24.9999).map(Quantity::milli), Ok(24_999));
    // Float noise just below an integer is not truncated away: 0.29*1000 = 289.99999999999994.
    assert_eq!(Quantity::from_f64(0.29).map(Quantity::milli), Ok(290));
    assert_eq!(Quantity::from_f64(4.35).map(Quantity::milli), Ok(4350));
}

#[test]
fn values_without_a_quantity_are_errors() {
    assert!(matches!(
        Quantity::from_f64(f64::NAN),
        Err(QuantityError::NotFinite { .. })
    ));
    assert!(matches!(
        Quantity::from_f64(f64::INFINITY),
        Err(QuantityError::NotFinite { .. })
    ));
    assert!(matches!(
        Quantity::from_f64(1e19),
        Err(QuantityError::OutOfRange { .. })
    ));
    assert!(Quantity::from_f64(9e15).is_ok());
}

#[test]
fn extreme_milli_values_keep_their_digits() {
    assert_eq!(
        Quantity::from_milli(i64::MAX).to_string(),
        "9223372036854775807m"
    );
    assert_eq!(
        Quantity::from_milli(i64::MIN).to_string(),
        "-9223372036854775808m"
    );
    assert_eq!(
        Quantity::from_milli(9_000_000_000_000_000_000).to_string(),
        "9P"
    );
    assert_eq!(Quantity::from_milli(10).to_string(), "10m");
    assert_eq!(Quantity::from_milli(10_000).to_string(), "10");
    assert_eq!(Quantity::from_milli(100_000_000).to_string(), "100k");
}

#[test]
fn parsing_reads_every_quantity_form_to_milli_units() {
    let cases: [(&str, i64); 24] = [
        ("0", 0),
        ("25500m", 25_500),
        ("10", 10_000),
        ("12m", 12),
        ("2k", 2_000_000),
        ("1.5", 1_500),
        ("1.", 1_000),
        (".5", 500),
        ("+3", 3_000),
        ("-2500m", -2_500),
        ("1M", 1_000_000_000),
        ("1P", 1_000_000_000_000_000_000),
        ("1e3", 1_000_000),
        ("1E3", 1_000_000),
        ("1e-3", 1),
        ("1Ki", 1_024_000),
        ("1.5Ki", 1_536_000),
        ("1Mi", 1_048_576_000),
        ("500u", 1),
        ("1n", 1),
        ("-1n", -1),
        ("1500u", 2),
        ("0.0001", 1),
        ("007", 7_000),
    ];
    for (input, milli) in cases {
        assert_eq!(
            Quantity::parse(input).map(Quantity::milli),
            Ok(milli),
            "{input}"
        );
    }
}

#[test]
fn malformed_quantities_are_rejected() {
    for input in [
        "", "-", "m", ".", "1.2.3", "1 k", "1e", "1x", "1KiB", "k1", "1e3.5",
    ] {
        assert!(Quantity::parse(input).is_err(), "{input:?}");
    }
    for input in ["1E", "10P", "99999999999999999999"] {
        assert!(
            matches!(Quantity::parse(input), Err(QuantityError::Overflow { .. })),
            "{input}"
        );
    }
}

#[test]
fn every_formatted_value_parses_back_to_itself() {
    let mut milli: i64 = 1;
    while milli < i64::MAX / 7 {
        for m in [
            milli,
            milli.saturating_mul(10),
            milli.saturating_mul(1000),
            -milli,
            milli + 1,
        ] {
            let text = Quantity::from_milli(m).to_string();
            assert_eq!(Quantity::parse(&text).map(Quantity::milli), Ok(m), "{text}");
        }
        milli *= 7;
    }
}

#[test]
fn quantities_serialise_as_strings() {
    let quantity = Quantity::from_milli(850);
    assert_eq!(
        serde_json::to_string(&quantity).expect("serialises"),
        "\"850m\""
    );
    assert_eq!(
        serde_json::from_str::<Quantity>("\"850m\"").expect("parses"),
        quantity
    );
}
