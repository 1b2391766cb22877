//! Durations (`30s`, `1h`, `500ms`, or a bare number of seconds) and sizes (`32MiB`,
//! `10MB`, or a bare number of bytes) as they appear in the YAML.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    pub const fn secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }
    pub const fn millis(ms: u64) -> Self {
        Dur(Duration::from_millis(ms))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as `30s`, `5m`, `1h` or a number of seconds")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
                Ok(Dur::secs(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                u64::try_from(v)
                    .map(Dur::secs)
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Dur, E> {
                Duration::try_from_secs_f64(v)
                    .map(Dur)
                    .map_err(|_| E::custom("a duration must be a positive number of seconds"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                humantime::parse_duration(v.trim())
                    .map(Dur)
                    .map_err(|e| E::custom(format!("invalid duration `{v}`: {e}")))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as `32MiB`, `512KiB` or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                v.trim()
                    .parse::<bytesize::ByteSize>()
                    .map(|b| Size(b.as_u64()))
                    .map_err(|e| E::custom(format!("invalid size `{v}`: {e}")))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        let d: Dur = serde_yaml::from_str("30s").unwrap();
        assert_eq!(d.0, Duration::from_secs(30));
        let d: Dur = serde_yaml::from_str("1h").unwrap();
        assert_eq!(d.0, Duration::from_secs(3600));
        let d: Dur = serde_yaml::from_str("250ms").unwrap();
        assert_eq!(d.0, Duration::from_millis(250));
        let d: Dur = serde_yaml::from_str("5").unwrap();
        assert_eq!(d.0, Duration::from_secs(5));
        assert!(serde_yaml::from_str::<Dur>("soon").is_err());
        assert!(serde_yaml::from_str::<Dur>("-3").is_err());
    }

    #[test]
    fn parses_sizes() {
        let s: Size = serde_yaml::from_str("32MiB").unwrap();
        assert_eq!(s.0, 32 * 1024 * 1024);
        let s: Size = serde_yaml::from_str("10KB").unwrap();
        assert_eq!(s.0, 10_000);
        let s: Size = serde_yaml::from_str("1234").unwrap();
        assert_eq!(s.0, 1234);
        assert!(serde_yaml::from_str::<Size>("lots").is_err());
    }
}
