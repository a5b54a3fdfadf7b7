//! Metric values as Kubernetes `resource.Quantity` strings, in the canonical form apimachinery
//! writes for the milli-quantities custom-metrics adapters build
//! (`resource.NewMilliQuantity(int64(v*1000), resource.DecimalSI)`): `25.5` is `"25500m"`, `10` is
//! `"10"`, `2000` is `"2k"`, `0.0125` is `"12m"`.
//!
//! Canonical form (`Quantity.CanonicalizeBytes` for DecimalSI, `int64Amount.AsCanonicalBytes`):
//! strip trailing zeros from the integer mantissa, then lower the exponent to a multiple of three
//! and write it as a suffix (`m`, none, `k`, `M`, `G`, `T`, `P`, `E`). No fraction is ever written:
//! 1.5 is `1500m`, 1500 is `1500`, 2000 is `2k`, zero is `0`. The HPA reads the value back with
//! `MilliValue()`, so every value it can see is a whole number of milli-units.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A value with milli-unit resolution, written as a canonical DecimalSI Quantity string.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quantity {
    milli: i64,
}

/// Why a number or a string is not a milli-unit Quantity.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QuantityError {
    #[error("{value} is not a finite number, so it has no Quantity")]
    NotFinite { value: f64 },
    #[error("{value} does not fit a milli-unit Quantity (at most about 9.2e15 in magnitude)")]
    OutOfRange { value: f64 },
    #[error(
        "quantity {input:?} is not <sign><digits>[.<digits>][<suffix>] (apimachinery's quantity syntax)"
    )]
    Syntax { input: String },
    #[error("quantity {input:?} has an unknown suffix {suffix:?}")]
    Suffix { input: String, suffix: String },
    #[error("quantity {input:?} does not fit a milli-unit Quantity")]
    Overflow { input: String },
}

impl Quantity {
    pub const ZERO: Quantity = Quantity { milli: 0 };

    pub const fn from_milli(milli: i64) -> Self {
        Self { milli }
    }

    /// The value in milli-units, as the HPA's `MilliValue()` reads it.
    pub const fn milli(self) -> i64 {
        self.milli
    }

    /// The Quantity adapters build for a float: truncated toward zero to whole milli-units
    /// (`int64(v*1000)`), so `0.0125` is `12m` and `0.0009` is `0`.
    ///
    /// One deliberate difference: `v*1000` is snapped to the nearest integer first when it is
    /// within float rounding error of it, so `0.29` is `290m` (Go's `int64(0.29*1000)` is
    /// `289`, because `0.29*1000` is `289.99999999999994`). NaN and infinities are errors, not
    /// zero: a value that is not a number must not reach the HPA as one.
    pub fn from_f64(value: f64) -> Result<Self, QuantityError> {
        if !value.is_finite() {
            return Err(QuantityError::NotFinite { value });
        }
        let milli = value * 1000.0;
        let nearest = milli.round();
        let tolerance = milli.abs().max(1.0) * 4.0 * f64::EPSILON;
        let milli = if (milli - nearest).abs() <= tolerance {
            nearest
        } else {
            milli.trunc()
        };
        // i64 holds [-2^63, 2^63); both bounds are exact as floats.
        const LIMIT: f64 = 9_223_372_036_854_775_808.0;
        if !(-LIMIT..LIMIT).contains(&milli) {
            return Err(QuantityError::OutOfRange { value });
        }
        #[expect(
            clippy::cast_possible_truncation,
            reason = "milli is integral and range-checked above"
        )]
        Ok(Self {
            milli: milli as i64,
        })
    }

    /// The value as a float (for averages and tests; the wire form is the string).
    #[expect(
        clippy::cast_precision_loss,
        reason = "a float view of a value below 2^53 milli-units is exact"
    )]
    pub fn as_f64(self) -> f64 {
        self.milli as f64 / 1000.0
    }

    pub fn checked_add(self, other: Quantity) -> Option<Quantity> {
        self.milli
            .checked_add(other.milli)
            .map(Quantity::from_milli)
    }

    /// Any Quantity string apimachinery accepts (`ParseQuantity`): decimal SI suffixes
    /// (`n u m k M G T P E`), binary ones (`Ki`..`Ei`) and exponents (`1e3`), read to milli-units
    /// rounding away from zero, as `MilliValue()` does (`1n` is `1m`).
    pub fn parse(input: &str) -> Result<Self, QuantityError> {
        let syntax = || QuantityError::Syntax {
            input: input.to_owned(),
        };
        let overflow = || QuantityError::Overflow {
            input: input.to_owned(),
        };
        let (negative, rest) = match input.as_bytes().first() {
            Some(b'-') => (true, &input[1..]),
            Some(b'+') => (false, &input[1..]),
            Some(_) => (false, input),
            None => return Err(syntax()),
        };
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, suffix) = rest.split_at(number_end);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
            return Err(syntax());
        }
        let (exp10, exp2) = suffix_exponents(suffix).ok_or_else(|| QuantityError::Suffix {
            input: input.to_owned(),
            suffix: suffix.to_owned(),
        })?;
        let digits = format!("{whole}{fraction}");
        let digits = digits.trim_start_matches('0');
        if digits.len() > 36 {
            return Err(overflow());
        }
        let mut mantissa: i128 = if digits.is_empty() {
            0
        } else {
            digits.parse().map_err(|_| syntax())?
        };
        mantissa = mantissa.checked_mul(1i128 << exp2).ok_or_else(overflow)?;
        // value = mantissa * 10^(exp10 - fraction digits); in milli-units, 3 more.
        let fraction_len = i32::try_from(fraction.len()).map_err(|_| overflow())?;
        let scale = exp10 + 3 - fraction_len;
        let magnitude = if scale >= 0 {
            let factor = 10i128
                .checked_pow(scale.unsigned_abs())
                .ok_or_else(overflow)?;
            mantissa.checked_mul(factor).ok_or_else(overflow)?
        } else {
            match 10i128.checked_pow(scale.unsigned_abs()) {
                // Round away from zero, as MilliValue does.
                Some(divisor) => mantissa.div_euclid(divisor) + i128::from(mantissa % divisor != 0),
                None => i128::from(mantissa != 0),
            }
        };
        let milli = if negative { -magnitude } else { magnitude };
        i64::try_from(milli)
            .map(Quantity::from_milli)
            .map_err(|_| overflow())
    }
}

/// `(power of ten, power of two)` of a suffix; `None` for an unknown one.
fn suffix_exponents(suffix: &str) -> Option<(i32, u32)> {
    Some(match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        _ => {
            let exponent = suffix.strip_prefix(['e', 'E'])?;
            let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (exponent.parse().ok()?, 0)
        }
    })
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.milli == 0 {
            return f.write_str("0");
        }
        // removeInt64Factors(mantissa, 10), then round the exponent down to a multiple of 3.
        let mut mantissa = self.milli.unsigned_abs();
        let mut exponent: i32 = -3;
        while mantissa >= 10 && mantissa.is_multiple_of(10) {
            mantissa /= 10;
            exponent += 1;
        }
        match exponent.rem_euclid(3) {
            1 => {
                mantissa *= 10;
                exponent -= 1;
            }
            2 => {
                mantissa *= 100;
                exponent -= 2;
            }
            _ => {}
        }
        let suffix = match exponent {
            -3 => "m",
            0 => "",
            3 => "k",
            6 => "M",
            9 => "G",
            12 => "T",
            15 => "P",
            // |i64| milli-units stop at about 9.2e15 units: "P" is the largest reachable.
            _ => "E",
        };
        let sign = if self.milli < 0 { "-" } else { "" };
        write!(f, "{sign}{mantissa}{suffix}")
    }
}

impl FromStr for Quantity {
    type Err = QuantityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Quantity::parse(s)
    }
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Quantity::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
