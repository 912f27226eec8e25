//! Resources: what a worker has (`resources` setting, `rask-worker --resources gpu=2,mem=16GiB`)
//! and what a task needs (`TaskOptions::resources`, the message's `resources` field), both a
//! [`Resources`] map from a resource name to an amount.
//!
//! Amounts are plain integers in whatever unit the deployment chooses for a resource (GPUs,
//! licences, bytes of memory); workers and tasks must use the same unit for the same name. For
//! memory-like amounts the text form accepts binary size suffixes, `KiB`, `MiB`, `GiB` and
//! `TiB` (2^10 to 2^40: `16GiB` is 17179869184), so `mem=16GiB` on a worker and `mem=512MiB` on a
//! task count in bytes. Decimal suffixes (`GB`) are refused rather than guessed at.
//!
//! A worker runs a task only while it has each needed amount free. A resource of at most
//! [`MAX_INDEXED`] units is made of numbered slots (`gpu=2`: slots 0 and 1) and a run learns the
//! slot indices it holds ([`ResourceSlots`]), e.g. to pick its GPU; a larger one (memory in
//! bytes) is only counted.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{Error, Result};

/// Resources of at most this many units are numbered slots whose indices a run learns; larger
/// ones (memory in bytes, say) are counted only.
pub const MAX_INDEXED: u64 = 1024;

/// The longest resource name.
pub const MAX_NAME_LEN: usize = 64;

/// The most resources a worker declares.
pub const MAX_RESOURCES: usize = 64;

/// The slot indices a run holds, by resource name (only resources of at most [`MAX_INDEXED`]
/// units have indices): `{"gpu": [1]}` for a task needing `gpu=1` that got GPU 1.
pub type ResourceSlots = BTreeMap<String, Vec<u32>>;

/// Amounts of named resources: what a worker has, or what a task needs. Serialized as a map
/// from name to amount; the text form is `gpu=2,mem=16GiB` ([`Resources::from_str`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Resources(BTreeMap<String, u64>);

impl Resources {
    /// No resources.
    pub fn new() -> Self {
        Resources::default()
    }

    /// Whether there are none (a task needing nothing; a worker declaring nothing).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many resources there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The amount of `name` (0 when absent).
    pub fn get(&self, name: &str) -> u64 {
        self.0.get(name).copied().unwrap_or(0)
    }

    /// Sets `name` to `amount`; an amount of 0 removes it.
    pub fn set(&mut self, name: impl Into<String>, amount: u64) {
        let name = name.into();
        if amount == 0 {
            self.0.remove(&name);
        } else {
            self.0.insert(name, amount);
        }
    }

    /// The resources and their amounts, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(name, amount)| (name.as_str(), *amount))
    }

    /// The first resource (by name) of `needs` that `self` has less of than needed, with the
    /// amount needed and the amount `self` has; `None` when `self` covers all of `needs`.
    pub fn lacks<'a>(&self, needs: &'a Resources) -> Option<(&'a str, u64, u64)> {
        needs
            .iter()
            .find(|(name, needed)| self.get(name) < *needed)
            .map(|(name, needed)| (name, needed, self.get(name)))
    }

    /// Checks a worker's resources: at most [`MAX_RESOURCES`] of them, names of 1 to
    /// [`MAX_NAME_LEN`] characters of `[A-Za-z0-9_.-]`.
    ///
    /// # Errors
    /// [`Error::InvalidResources`] naming the first bad name, or the count.
    pub fn validate(&self) -> Result<()> {
        if self.0.len() > MAX_RESOURCES {
            return Err(Error::InvalidResources(format!(
                "{} resources: at most {MAX_RESOURCES} are supported",
                self.0.len()
            )));
        }
        match self.0.keys().find(|name| !valid_name(name)) {
            Some(name) => Err(Error::InvalidResources(format!(
                "bad resource name {name:?}: names are 1-{MAX_NAME_LEN} characters of \
                 [A-Za-z0-9_.-]"
            ))),
            None => Ok(()),
        }
    }
}

impl<N: Into<String>> FromIterator<(N, u64)> for Resources {
    /// Amounts of 0 are left out; a repeated name keeps its last amount.
    fn from_iter<I: IntoIterator<Item = (N, u64)>>(iter: I) -> Self {
        let mut resources = Resources::new();
        for (name, amount) in iter {
            resources.set(name, amount);
        }
        resources
    }
}

impl IntoIterator for Resources {
    type Item = (String, u64);
    type IntoIter = std::collections::btree_map::IntoIter<String, u64>;

    /// The resources and their amounts, sorted by name.
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// The binary size suffixes and their factors.
const SUFFIXES: [(&str, u64); 4] = [
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
];

/// Parses an amount: an integer, optionally with a binary size suffix (`KiB`, `MiB`, `GiB`,
/// `TiB`, any case), e.g. `2`, `512MiB`, `16GiB`.
///
/// # Errors
/// [`Error::InvalidResources`] saying what is wrong with `text`.
pub fn parse_amount(text: &str) -> Result<u64> {
    let bad = |why: &str| {
        Err(Error::InvalidResources(format!(
            "bad amount {text:?}: {why}"
        )))
    };
    let text = text.trim();
    let digits = text.trim_end_matches(|c: char| !c.is_ascii_digit());
    let suffix = text[digits.len()..].trim();
    let factor = if suffix.is_empty() {
        1
    } else if let Some((_, factor)) = SUFFIXES
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(suffix))
    {
        *factor
    } else {
        return bad(
            "expected an integer, optionally with a binary size suffix KiB, MiB, GiB or TiB \
             (decimal units such as GB are not accepted)",
        );
    };
    let Ok(number) = digits.parse::<u64>() else {
        return bad("expected an integer, optionally with a suffix KiB, MiB, GiB or TiB");
    };
    match number.checked_mul(factor) {
        Some(amount) => Ok(amount),
        None => bad("too large"),
    }
}

/// An amount as text: with the largest binary suffix that divides it when it is at least
/// 1 MiB (`17179869184` shows as `16GiB`), else the plain integer.
pub fn format_amount(amount: u64) -> String {
    if amount >= 1 << 20 {
        if let Some((suffix, factor)) = SUFFIXES
            .iter()
            .rev()
            .find(|(_, factor)| amount % factor == 0)
        {
            return format!("{}{suffix}", amount / factor);
        }
    }
    amount.to_string()
}

impl FromStr for Resources {
    type Err = Error;

    /// Parses `name=amount` pairs separated by commas (`gpu=2,mem=16GiB`; an empty text is no
    /// resources). Each amount is read by [`parse_amount`] and must be at least 1; names must
    /// be valid ([`Resources::validate`]) and appear once.
    fn from_str(text: &str) -> Result<Self> {
        let mut resources = Resources::new();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((name, amount)) = pair.split_once('=') else {
                return Err(Error::InvalidResources(format!(
                    "{pair:?} is not NAME=AMOUNT (e.g. gpu=2,mem=16GiB)"
                )));
            };
            let name = name.trim();
            if resources.0.contains_key(name) {
                return Err(Error::InvalidResources(format!(
                    "resource {name:?} is given twice"
                )));
            }
            insert(&mut resources, name, parse_amount(amount)?)?;
        }
        resources.validate()?;
        Ok(resources)
    }
}

/// Inserts `amount` of `name`, refusing 0.
fn insert(resources: &mut Resources, name: &str, amount: u64) -> Result<()> {
    if amount == 0 {
        return Err(Error::InvalidResources(format!(
            "resource {name:?} has amount 0: give at least 1, or leave it out"
        )));
    }
    resources.0.insert(name.to_owned(), amount);
    Ok(())
}

impl fmt::Display for Resources {
    /// The text form, `gpu=2,mem=16GiB` (see [`format_amount`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, amount)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{name}={}", format_amount(amount))?;
        }
        Ok(())
    }
}

/// Reads the `resources` setting: the text form (`RASK_RESOURCES="gpu=2,mem=16GiB"`) or a table
/// of amounts, integers or text with a suffix (`[resources]` `gpu = 2`, `mem = "16GiB"`).
///
/// # Errors
/// The deserializer's error naming what is wrong.
pub fn deserialize_setting<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Resources, D::Error> {
    use serde::de::Error as _;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Amount {
        Number(u64),
        Text(String),
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Table(BTreeMap<String, Amount>),
    }
    let parsed = match Raw::deserialize(deserializer)? {
        Raw::Text(text) => text.parse(),
        Raw::Table(table) => {
            let mut resources = Resources::new();
            table
                .into_iter()
                .try_for_each(|(name, amount)| {
                    let amount = match amount {
                        Amount::Number(n) => n,
                        Amount::Text(text) => parse_amount(&text)?,
                    };
                    insert(&mut resources, &name, amount)
                })
                .and_then(|()| resources.validate())
                .map(|()| resources)
        }
    };
    parsed.map_err(|e| D::Error::custom(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_parse_with_binary_suffixes_only() {
        assert_eq!(parse_amount("2").unwrap(), 2);
        assert_eq!(parse_amount(" 16GiB ").unwrap(), 16 << 30);
        assert_eq!(parse_amount("512mib").unwrap(), 512 << 20);
        assert_eq!(parse_amount("4KiB").unwrap(), 4096);
        assert_eq!(parse_amount("1TiB").unwrap(), 1 << 40);
        for bad in [
            "",
            "GiB",
            "16GB",
            "16G",
            "-1",
            "1.5GiB",
            "x",
            "99999999999TiB",
        ] {
            let err = parse_amount(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
        assert!(parse_amount("16GB")
            .unwrap_err()
            .to_string()
            .contains("GB are not"));
    }

    #[test]
    fn the_text_form_round_trips() {
        let r: Resources = "gpu=2, mem=16GiB".parse().unwrap();
        assert_eq!((r.get("gpu"), r.get("mem"), r.get("tpu")), (2, 16 << 30, 0));
        assert_eq!(r.to_string(), "gpu=2,mem=16GiB");
        assert_eq!(r.to_string().parse::<Resources>().unwrap(), r);
        assert!("".parse::<Resources>().unwrap().is_empty());
        let odd: Resources = "mem=1048577".parse().unwrap();
        assert_eq!(odd.to_string(), "mem=1048577");
    }

    #[test]
    fn bad_text_is_named() {
        let many: String = (0..65).map(|i| format!("r{i}=1,")).collect();
        for (text, says) in [
            ("gpu", "NAME=AMOUNT"),
            ("gpu=0", "amount 0"),
            ("gpu=1,gpu=2", "twice"),
            ("g pu=1", "bad resource name"),
            ("=1", "bad resource name"),
            ("gpu=two", "bad amount"),
            (&many, "at most 64"),
        ] {
            let err = text.parse::<Resources>().unwrap_err().to_string();
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn lacks_names_the_first_short_resource() {
        let has: Resources = "gpu=2,mem=1GiB".parse().unwrap();
        assert_eq!(has.lacks(&"gpu=2".parse().unwrap()), None);
        assert_eq!(has.lacks(&Resources::new()), None);
        assert_eq!(
            has.lacks(&"gpu=3,mem=1KiB".parse().unwrap()),
            Some(("gpu", 3, 2))
        );
        assert_eq!(has.lacks(&"tpu=1".parse().unwrap()), Some(("tpu", 1, 0)));
    }

    #[test]
    fn zero_amounts_are_left_out_when_built_from_pairs() {
        let r: Resources = [("gpu", 1), ("mem", 0)].into_iter().collect();
        assert_eq!(r.to_string(), "gpu=1");
    }

    #[test]
    fn messages_carry_a_plain_map() {
        let r: Resources = "gpu=1".parse().unwrap();
        let bytes = rmp_serde::to_vec_named(&r).unwrap();
        let map: BTreeMap<String, u64> = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(map.get("gpu"), Some(&1));
    }
}
