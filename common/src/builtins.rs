//! The functions every stock `rask-worker` runs, as typed handles producers can submit. (The
//! demo's image tasks, which the stock worker runs too, are in the `rask-demo` crate.)

use std::time::Duration;

use serde::{Deserialize, Serialize};

crate::task! {
    /// `x + 1` (the throughput and latency benchmarks' task).
    pub fn inc(x: i64) -> Result<i64, String> {
        x.checked_add(1).ok_or_else(|| format!("inc({x}) overflows i64"))
    }
}

crate::task! {
    /// `a + b`.
    pub fn add(a: i64, b: i64) -> Result<i64, String> {
        a.checked_add(b).ok_or_else(|| format!("add({a}, {b}) overflows i64"))
    }
}

crate::task! {
    /// `i % 7 + 1`: the leaves of the benchmark's reduction tree.
    pub fn leaf(i: i64) -> i64 { i.rem_euclid(7) + 1 }
}

crate::task! {
    /// The sum of a list of numbers: an integer if all are integers, else a float.
    pub fn sum(numbers: Vec<Number>) -> Result<Number, String> {
        let mut int: i64 = 0;
        let mut float: Option<f64> = None;
        for n in numbers {
            match (n, float.as_mut()) {
                (Number::Int(i), None) => {
                    int = int.checked_add(i).ok_or("sum overflows i64; pass floats")?;
                }
                (Number::Int(i), Some(f)) => *f += i as f64,
                (Number::Float(x), None) => float = Some(int as f64 + x),
                (Number::Float(x), Some(f)) => *f += x,
            }
        }
        Ok(float.map_or(Number::Int(int), Number::Float))
    }
}

crate::task! {
    /// The sum of a list of integers (the fan-in of task graphs).
    pub fn sum_ints(numbers: Vec<i64>) -> Result<i64, String> {
        numbers
            .iter()
            .try_fold(0i64, |total, n| total.checked_add(*n))
            .ok_or_else(|| "sum_ints overflows i64".to_owned())
    }
}

crate::task! {
    /// Returns its argument unchanged (any value: bytes, text, lists, maps).
    pub fn echo(value: rmpv::Value) -> rmpv::Value { value }
}

crate::task! {
    /// Sleeps `ms` milliseconds without holding a thread, then returns `ms`.
    pub async fn sleep_ms(ms: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        ms
    }
}

crate::task! {
    /// Sleeps `ms` milliseconds, or `slow_ms` in `per_mille` runs out of 1,000 (drawn afresh at
    /// each run, not per argument: a straggler is a slow moment of a machine, not a slow
    /// input), then returns `i`: the `stragglers` benchmark's task (hedged execution).
    pub async fn straggle(i: u64, ms: u64, slow_ms: u64, per_mille: u32) -> u64 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let draw = spin(u64::from(nanos) ^ i.rotate_left(32), 2) % 1000;
        let pause = if draw < u64::from(per_mille) { slow_ms } else { ms };
        tokio::time::sleep(Duration::from_millis(pause)).await;
        i
    }
}

crate::task! {
    /// CPU-bound work of a fixed size, for scaling measurements: [`spin`]`(seed, rounds)`.
    /// A fixed amount of work rather than a fixed time, so that workers sharing a core take
    /// longer instead of finishing early. A million rounds take about 5.5 ms on this machine.
    pub fn spin_hash(seed: u64, rounds: u32) -> u64 { spin(seed, rounds) }
}

/// `rounds` rounds of the splitmix64 mixer (a multiply/xor-shift dependency chain on one 64-bit
/// state that starts as `seed`); the last state. What [`spin_hash`] computes. Plain integer
/// work: no SIMD or SHA instructions, which virtual CPUs may share with their siblings.
pub fn spin(seed: u64, rounds: u32) -> u64 {
    let mut state = seed;
    for _ in 0..rounds {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        state = z ^ (z >> 31);
    }
    state
}

crate::task! {
    /// Always fails with `message` (to see failures end to end).
    pub fn fail(message: String) -> Result<(), String> { Err(message) }
}

/// A number as `sum` takes and returns it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Number {
    /// A whole number.
    Int(i64),
    /// A floating-point number.
    Float(f64),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{Invocation, Task};

    fn run<T>(inv: Invocation<T>) -> Result<T, crate::TaskError> {
        match inv {
            Invocation::Blocking(f) => f(),
            Invocation::Async(_) => unreachable!("sync builtins only"),
        }
    }

    #[test]
    fn sums_ints_and_floats() {
        assert_eq!(
            run(sum::invoke((vec![Number::Int(2), Number::Int(3)],))),
            Ok(Number::Int(5))
        );
        assert_eq!(
            run(sum::invoke((vec![Number::Int(2), Number::Float(0.5)],))),
            Ok(Number::Float(2.5))
        );
        assert!(run(sum::invoke((vec![Number::Int(i64::MAX), Number::Int(1)],))).is_err());
    }

    #[tokio::test]
    async fn the_longest_sleep_neither_panics_nor_ends() {
        // `ms` comes from whoever publishes the task: `u64::MAX` milliseconds must not overflow
        // the timer (tokio clamps it); the sleep is then bounded by the task's time limit.
        let Invocation::Async(sleep) = sleep_ms::invoke((u64::MAX,)) else {
            unreachable!("sleep_ms is async")
        };
        let waited = tokio::time::timeout(Duration::from_millis(20), sleep).await;
        assert!(waited.is_err(), "still sleeping");
    }

    #[test]
    fn numbers_decode_from_msgpack_ints_and_floats() {
        let bytes =
            rmp_serde::to_vec(&(vec![rmpv::Value::from(1), rmpv::Value::from(1.5)],)).unwrap();
        let (ns,): (Vec<Number>,) = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(ns, vec![Number::Int(1), Number::Float(1.5)]);
    }

    #[test]
    fn inc_and_fail() {
        assert_eq!(run(inc::invoke((41,))), Ok(42));
        assert!(run(inc::invoke((i64::MAX,))).is_err());
        assert_eq!(
            run(fail::invoke(("no".into(),))).unwrap_err().message(),
            "no"
        );
        assert_eq!(run(leaf::invoke((10,))), Ok(4));
        assert_eq!(run(sum_ints::invoke((vec![1, 2, 3],))), Ok(6));
        assert_eq!(run(spin_hash::invoke((7, 3))), Ok(spin(7, 3)));
        assert_ne!(spin(7, 3), spin(7, 4));
        assert_ne!(spin(7, 3), spin(8, 3));
        assert!(run(sum_ints::invoke((vec![i64::MAX, 1],))).is_err());
    }
}
