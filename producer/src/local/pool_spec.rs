//! [`PoolWorkers`]: extra workers of `rask local up` serving one pool, as given by
//! `--pool NAME:COUNT[:RESOURCE=AMOUNT,...]` (e.g. `gpu:1:gpu=2`), and the arguments and
//! environment they are started with.

use std::fmt;
use std::io;
use std::str::FromStr;

use rask_common::Pool;

/// The variable the resources of a pool's workers are passed in (`gpu=2,mem=16GiB`), read as
/// the workers' `resources` setting.
pub const RESOURCES_VARIABLE: &str = "RASK_RESOURCES";

/// `count` workers serving `pool` only, each declaring `resources`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolWorkers {
    /// The pool they serve.
    pub pool: Pool,
    /// How many.
    pub count: usize,
    /// The resources each declares, as `(name, amount)` in the order given (e.g.
    /// `("gpu", "2")`); amounts are the worker's to parse.
    pub resources: Vec<(String, String)>,
}

impl PoolWorkers {
    /// The worker's command-line arguments: `--pools NAME`.
    pub fn args(&self) -> Vec<String> {
        vec!["--pools".to_owned(), self.pool.to_string()]
    }

    /// The worker's extra environment: its resources in [`RESOURCES_VARIABLE`], if any.
    pub fn env(&self) -> Vec<(String, String)> {
        if self.resources.is_empty() {
            return Vec::new();
        }
        let resources: Vec<String> = self
            .resources
            .iter()
            .map(|(name, amount)| format!("{name}={amount}"))
            .collect();
        vec![(RESOURCES_VARIABLE.to_owned(), resources.join(","))]
    }
}

impl FromStr for PoolWorkers {
    type Err = io::Error;

    /// Parses `NAME:COUNT[:RESOURCE=AMOUNT,...]`.
    fn from_str(text: &str) -> io::Result<Self> {
        let bad = |why: &str| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("--pool {text:?}: {why} (expected NAME:COUNT[:RESOURCE=AMOUNT,...], e.g. gpu:1:gpu=2)"),
            )
        };
        let mut parts = text.splitn(3, ':');
        let name = parts.next().unwrap_or_default();
        let pool = Pool::new(name).map_err(|e| bad(&e.to_string()))?;
        let count = parts
            .next()
            .ok_or_else(|| bad("no COUNT"))?
            .parse::<usize>()
            .map_err(|_| bad("COUNT is not a number"))?;
        let mut resources = Vec::new();
        for entry in parts
            .next()
            .unwrap_or_default()
            .split(',')
            .filter(|e| !e.is_empty())
        {
            let (name, amount) = entry
                .split_once('=')
                .filter(|(n, a)| !n.is_empty() && !a.is_empty())
                .ok_or_else(|| bad(&format!("resource {entry:?} is not RESOURCE=AMOUNT")))?;
            resources.push((name.to_owned(), amount.to_owned()));
        }
        Ok(PoolWorkers {
            pool,
            count,
            resources,
        })
    }
}

impl fmt::Display for PoolWorkers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.pool, self.count)?;
        for (i, (name, amount)) in self.resources.iter().enumerate() {
            let sep = if i == 0 { ':' } else { ',' };
            write!(f, "{sep}{name}={amount}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print_back() {
        let gpu: PoolWorkers = "gpu:1:gpu=2,mem=16GiB".parse().unwrap();
        assert_eq!(gpu.pool.as_str(), "gpu");
        assert_eq!(gpu.count, 1);
        assert_eq!(
            gpu.resources,
            [("gpu".into(), "2".into()), ("mem".into(), "16GiB".into())]
        );
        assert_eq!(gpu.to_string(), "gpu:1:gpu=2,mem=16GiB");
        assert_eq!(gpu.args(), ["--pools", "gpu"]);
        assert_eq!(
            gpu.env(),
            [(RESOURCES_VARIABLE.to_owned(), "gpu=2,mem=16GiB".to_owned())]
        );
        let plain: PoolWorkers = "io:3".parse().unwrap();
        assert_eq!((plain.count, plain.env()), (3, Vec::new()));
        assert_eq!(plain.to_string(), "io:3");
        for bad in ["gpu", "gpu:x", "g.pu:1", "gpu:1:gpu", "gpu:1:=2", ":1"] {
            let err = bad.parse::<PoolWorkers>().unwrap_err().to_string();
            assert!(err.contains("NAME:COUNT"), "{bad}: {err}");
        }
    }
}
