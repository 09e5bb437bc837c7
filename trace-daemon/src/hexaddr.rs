//! Kernel addresses in JSON as `"0xffff888102769000"` strings: as numbers they
//! exceed 2^53, and `jq` or any JavaScript reader silently rounds them to a
//! wrong address. Reading accepts both forms (older findings files wrote
//! numbers).
use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

pub fn format(a: u64) -> String {
    format!("{a:#x}")
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Either {
    Hex(String),
    Num(u64),
}

fn parse<E: serde::de::Error>(v: Either) -> Result<u64, E> {
    match v {
        Either::Num(n) => Ok(n),
        Either::Hex(s) => {
            let h = s
                .strip_prefix("0x")
                .ok_or_else(|| E::custom(format!("address {s:?} is not 0x-hex")))?;
            u64::from_str_radix(h, 16).map_err(|e| E::custom(format!("address {s:?}: {e}")))
        }
    }
}

/// `u64` fields.
pub mod one {
    use super::*;

    pub fn serialize<S: Serializer>(a: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*a))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        parse(Either::deserialize(d)?)
    }
}

/// `Option<u64>` fields.
pub mod opt {
    use super::*;

    pub fn serialize<S: Serializer>(a: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match a {
            Some(a) => s.serialize_str(&format(*a)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        Option::<Either>::deserialize(d)?.map(parse).transpose()
    }
}

/// `Vec<(String, u64)>` fields: `[["kvm", "0x..."], ...]`.
pub mod pairs {
    use super::*;
    use serde::ser::SerializeSeq as _;

    pub fn serialize<S: Serializer>(v: &[(String, u64)], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for (role, a) in v {
            seq.serialize_element(&(role, format(*a)))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, u64)>, D::Error> {
        Vec::<(String, Either)>::deserialize(d)?
            .into_iter()
            .map(|(r, a)| parse(a).map(|a| (r, a)))
            .collect::<Result<_, D::Error>>()
            .map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct T {
        #[serde(with = "super::one")]
        a: u64,
        #[serde(with = "super::opt")]
        b: Option<u64>,
        #[serde(with = "super::pairs")]
        c: Vec<(String, u64)>,
    }

    #[test]
    fn addresses_above_2_pow_53_survive_a_json_round_trip_as_strings() {
        let t = T {
            a: 18397502919017271296,
            b: Some(0xffff_8881_0276_9000),
            c: vec![("kvm".into(), 18397502919017271296)],
        };
        let j = serde_json::to_string(&t).unwrap();
        assert_eq!(
            j,
            r#"{"a":"0xff510f6e423c9000","b":"0xffff888102769000","c":[["kvm","0xff510f6e423c9000"]]}"#
        );
        assert_eq!(serde_json::from_str::<T>(&j).unwrap(), t);
        // Older files wrote numbers.
        let old = r#"{"a":1,"b":null,"c":[["kvm",2]]}"#;
        let t: T = serde_json::from_str(old).unwrap();
        assert_eq!((t.a, t.b, t.c[0].1), (1, None, 2));
        assert!(serde_json::from_str::<T>(r#"{"a":"ff","b":null,"c":[]}"#).is_err());
    }
}
