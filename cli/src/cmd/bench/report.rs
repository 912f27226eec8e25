//! What a bench run measured, and how it is printed: `RESULT` lines for scripts (as each workload
//! finishes), a table for people, or one JSON document for tools.
//!
//! A `RESULT` line is `RESULT system=rask|floor workload=NAME k=v ...`; the figures are medians
//! over the runs, and every ratio is the median over the runs of rask's figure divided by the
//! floor's in the same run (paired: both ran back to back on the same machine state), `ratio`
//! for the workload's main figure. Above 1 is better for rates (`tasks_per_s`, `mib_per_s`) and
//! worse for times (`p50_us`, `seconds`).

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::Workload;

/// Named figures of one run, in print order (e.g. `tasks_per_s`, `cpu_client_s`).
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Figures(Vec<(&'static str, f64)>);

impl Figures {
    /// These figures and `key = value`.
    pub(super) fn with(mut self, key: &'static str, value: f64) -> Self {
        self.set(key, value);
        self
    }

    /// Sets `key` (replacing an earlier value).
    pub(super) fn set(&mut self, key: &'static str, value: f64) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.0.push((key, value)),
        }
    }

    /// Every figure, in print order.
    pub(super) fn entries(&self) -> impl Iterator<Item = (&'static str, f64)> + '_ {
        self.0.iter().copied()
    }

    /// The value of `key`, if measured.
    pub(super) fn get(&self, key: &str) -> Option<f64> {
        self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    /// The median of each figure over `runs` (the lower middle one for an even count).
    pub(super) fn median(runs: &[Figures]) -> Figures {
        let Some(first) = runs.first() else {
            return Figures::default();
        };
        let mut median = Figures::default();
        for (key, _) in &first.0 {
            let mut values: Vec<f64> = runs.iter().filter_map(|r| r.get(key)).collect();
            values.sort_by(f64::total_cmp);
            median.set(key, values[(values.len() - 1) / 2]);
        }
        median
    }
}

/// A figure compared between rask and the floor.
pub(super) struct Metric {
    /// Its key in [`Figures`].
    pub(super) key: &'static str,
    /// The key of its ratio in `RESULT` lines.
    pub(super) ratio_key: &'static str,
    /// How the table names it, with its unit.
    pub(super) label: &'static str,
}

/// One workload's results: rask's and the floor's (medians over the runs), and their ratios.
pub(super) struct Row {
    pub(super) workload: Workload,
    /// What was run, e.g. `20,000 inc`.
    pub(super) size: String,
    pub(super) rask: Figures,
    pub(super) floor: Figures,
    /// For each of the workload's metrics, the median over the runs of rask's figure divided by
    /// the floor's of the same run.
    ratios: Vec<Option<f64>>,
}

impl Row {
    /// The row of `workload` from its runs: `rask[i]` and `floor[i]` ran as a pair.
    pub(super) fn new(
        workload: Workload,
        size: String,
        rask: &[Figures],
        floor: &[Figures],
    ) -> Self {
        let ratios = workload
            .metrics()
            .iter()
            .map(|m| {
                let mut paired: Vec<f64> = rask
                    .iter()
                    .zip(floor)
                    .filter_map(|(r, f)| match (r.get(m.key), f.get(m.key)) {
                        (Some(r), Some(f)) if f > 0.0 => Some(r / f),
                        _ => None,
                    })
                    .collect();
                paired.sort_by(f64::total_cmp);
                // The lower middle one for an even count, as for the figures.
                (!paired.is_empty()).then(|| paired[(paired.len() - 1) / 2])
            })
            .collect();
        Row {
            workload,
            size,
            rask: Figures::median(rask),
            floor: Figures::median(floor),
            ratios,
        }
    }

    /// Each compared metric with its ratio (see [`Row::ratios`]).
    fn ratios(&self) -> Vec<(&'static Metric, Option<f64>)> {
        self.workload
            .metrics()
            .iter()
            .zip(self.ratios.iter().copied())
            .collect()
    }

    /// The two `RESULT` lines, rask's (with the ratios) then the floor's.
    pub(super) fn result_lines(&self) -> [String; 2] {
        let name = self.workload.name();
        let mut rask = format!("RESULT system=rask workload={name}");
        for (key, value) in &self.rask.0 {
            let _ = write!(rask, " {key}={}", number(key, *value));
        }
        for (metric, ratio) in self.ratios() {
            if let Some(ratio) = ratio {
                let _ = write!(rask, " {}={ratio:.3}", metric.ratio_key);
            }
        }
        let mut floor = format!("RESULT system=floor workload={name}");
        for (key, value) in &self.floor.0 {
            let _ = write!(floor, " {key}={}", number(key, *value));
        }
        [rask, floor]
    }
}

/// Idle workers, measured before the workloads.
pub(super) struct Idle {
    pub(super) window: Duration,
    pub(super) workers: Vec<IdleWorker>,
}

/// One idle worker.
pub(super) struct IdleWorker {
    pub(super) pid: u32,
    pub(super) rss_mib: f64,
    pub(super) cpu_percent: f64,
}

/// The idle worker RSS the issue aims under.
pub(super) const IDLE_RSS_TARGET_MIB: f64 = 20.0;

impl Idle {
    fn max_rss(&self) -> f64 {
        self.workers.iter().map(|w| w.rss_mib).fold(0.0, f64::max)
    }

    fn max_cpu(&self) -> f64 {
        self.workers
            .iter()
            .map(|w| w.cpu_percent)
            .fold(0.0, f64::max)
    }

    /// `RESULT system=rask workload=idle ...`: the largest RSS and CPU of any worker.
    pub(super) fn result_line(&self) -> String {
        format!(
            "RESULT system=rask workload=idle workers={} window_s={:.1} rss_mib={:.1} cpu_percent={:.2} target_rss_mib={IDLE_RSS_TARGET_MIB:.0}",
            self.workers.len(),
            self.window.as_secs_f64(),
            self.max_rss(),
            self.max_cpu(),
        )
    }
}

/// Where and how the run happened, for the header and the JSON document.
pub(super) struct Context {
    /// `private` or `running`.
    pub(super) cluster: &'static str,
    pub(super) workers: usize,
    pub(super) runs: u32,
    pub(super) smoke: bool,
    pub(super) cpus: usize,
    /// `release` or `debug`.
    pub(super) build: &'static str,
    /// Seconds from start to the last workload's end.
    pub(super) seconds: f64,
    /// Whether the cluster recorded task events: `on`, `off` (`--no-events`) or `as deployed`
    /// (`--use-running`).
    pub(super) events: &'static str,
    /// Where the private cluster keeps its files: `temp dir` or `shared memory`
    /// (`--in-memory`), or `as deployed` (`--use-running`).
    pub(super) files: &'static str,
    /// Whether values over `blob_threshold` went to a blob store: `on` (`--blobs`), `off`, or
    /// `as deployed` (`--use-running`).
    pub(super) blobs: &'static str,
    /// The workers' `runtime_threads` (`--runtime-threads`; 0: one per CPU), or `None` as
    /// deployed (`--use-running`).
    pub(super) runtime_threads: Option<usize>,
}

/// The human table: each figure beside the floor, then memory and CPU, then idle workers.
pub(super) fn table(context: &Context, rows: &[Row], idle: Option<&Idle>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "rask bench: {} cluster, {} worker process(es), {} CPU(s), {} build, {} run(s) per workload, task events {}, files in {}, blob store {}, worker runtime threads {}{}",
        context.cluster,
        context.workers,
        context.cpus,
        context.build,
        context.runs,
        context.events,
        context.files,
        context.blobs,
        match context.runtime_threads {
            None => "as deployed".to_owned(),
            Some(0) => "one per CPU".to_owned(),
            Some(n) => n.to_string(),
        },
        if context.smoke { " (--smoke: sizes too small to mean anything)" } else { "" }
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<11} {:<26} {:<9} {:>11} {:>11} {:>10}",
        "workload", "size", "figure", "rask", "floor", "rask/floor"
    );
    for row in rows {
        for (n, (metric, ratio)) in row.ratios().into_iter().enumerate() {
            let (name, size) = if n == 0 {
                (row.workload.name(), row.size.as_str())
            } else {
                ("", "")
            };
            let cell = |f: &Figures| {
                f.get(metric.key)
                    .map_or("-".into(), |v| human(metric.key, v))
            };
            let _ = writeln!(
                out,
                "{name:<11} {size:<26} {:<9} {:>11} {:>11} {:>10}",
                metric.label,
                cell(&row.rask),
                cell(&row.floor),
                ratio.map_or("-".into(), |r| format!("{r:.2}")),
            );
        }
    }
    let _ = writeln!(
        out,
        "rask/floor: median over the runs of rask's figure divided by the floor's in the same run; above 1 is better for tasks/s and MiB/s, worse for µs and s."
    );

    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<11} {:<6} {:>8} {:>9} {:>9} {:>9} {:>9} {:>11} {:>12}",
        "workload",
        "system",
        "wall s",
        "client",
        "workers",
        "rabbitmq",
        "redis",
        "client RSS",
        "worker RSS"
    );
    for row in rows {
        for (system, figures) in [("rask", &row.rask), ("floor", &row.floor)] {
            let wall = figures
                .get("wall_s")
                .map_or("-".into(), |v| format!("{v:.2}"));
            let cell = |key: &str, decimals: usize| {
                figures
                    .get(key)
                    .map_or("-".into(), |v| format!("{v:.decimals$}"))
            };
            let _ = writeln!(
                out,
                "{:<11} {system:<6} {wall:>8} {:>9} {:>9} {:>9} {:>9} {:>11} {:>12}",
                if system == "rask" {
                    row.workload.name()
                } else {
                    ""
                },
                cell("cpu_client_s", 2),
                cell("cpu_workers_s", 2),
                cell("cpu_rabbitmq_s", 2),
                cell("cpu_redis_s", 2),
                cell("client_peak_rss_mib", 1),
                cell("worker_peak_rss_mib", 1),
            );
        }
    }
    let _ = writeln!(
        out,
        "CPU seconds used by each process during the run (all threads; set-up and clean-up included, as in wall s);\nthe floor's client column includes its consumers. RSS: peak MiB during the run (the largest worker)."
    );
    if let Some(idle) = idle {
        let _ = writeln!(out);
        let workers: Vec<String> = idle
            .workers
            .iter()
            .map(|w| {
                format!(
                    "pid {} {:.1} MiB {:.2}% CPU",
                    w.pid, w.rss_mib, w.cpu_percent
                )
            })
            .collect();
        let verdict = if idle.max_rss() < IDLE_RSS_TARGET_MIB {
            "under"
        } else {
            "OVER"
        };
        let _ = writeln!(
            out,
            "idle workers over {:.1} s: {} ({verdict} the {IDLE_RSS_TARGET_MIB:.0} MiB target)",
            idle.window.as_secs_f64(),
            workers.join("; ")
        );
    }
    let _ = writeln!(out, "total time: {:.1} s", context.seconds);
    out
}

/// The whole run as one JSON object.
pub(super) fn json(context: &Context, rows: &[Row], idle: Option<&Idle>) -> Value {
    let figures = |f: &Figures| {
        Value::Object(
            f.0.iter()
                .map(|(k, v)| ((*k).to_owned(), json!(rounded(k, *v))))
                .collect::<Map<_, _>>(),
        )
    };
    let workloads: Vec<Value> = rows
        .iter()
        .map(|row| {
            let ratios: Map<String, Value> = row
                .ratios()
                .into_iter()
                .filter_map(|(m, r)| Some((m.key.to_owned(), json!(round(r?, 3)))))
                .collect();
            json!({
                "workload": row.workload.name(),
                "size": row.size,
                "rask": figures(&row.rask),
                "floor": figures(&row.floor),
                "ratio": ratios,
            })
        })
        .collect();
    let idle = idle.map(|idle| {
        json!({
            "window_s": idle.window.as_secs_f64(),
            "target_rss_mib": IDLE_RSS_TARGET_MIB,
            "workers": idle.workers.iter().map(|w| json!({
                "pid": w.pid,
                "rss_mib": round(w.rss_mib, 1),
                "cpu_percent": round(w.cpu_percent, 2),
            })).collect::<Vec<_>>(),
        })
    });
    json!({
        "cluster": context.cluster,
        "workers": context.workers,
        "runs": context.runs,
        "smoke": context.smoke,
        "cpus": context.cpus,
        "build": context.build,
        "seconds": round(context.seconds, 1),
        "events": context.events,
        "files": context.files,
        "blobs": context.blobs,
        "runtime_threads": context.runtime_threads,
        "idle": idle,
        "workloads": workloads,
    })
}

/// How many decimals a figure deserves, from its key.
fn decimals(key: &str) -> usize {
    match key {
        "seconds" | "wall_s" => 3,
        "tasks" | "tasks_per_s" | "round_trips" | "payloads" => 0,
        k if k.ends_with("_us") => 0,
        k if k.starts_with("cpu_") => 2,
        _ => 1,
    }
}

fn number(key: &str, value: f64) -> String {
    format!("{value:.*}", decimals(key))
}

fn rounded(key: &str, value: f64) -> f64 {
    round(value, decimals(key))
}

fn round(value: f64, decimals: usize) -> f64 {
    let scale = 10f64.powi(i32::try_from(decimals).unwrap_or(3));
    (value * scale).round() / scale
}

/// A figure for people: thousands separated for big whole numbers.
fn human(key: &str, value: f64) -> String {
    let decimals = decimals(key);
    if decimals == 0 {
        thousands(value.round() as u64)
    } else {
        format!("{value:.decimals$}")
    }
}

/// `20000` → `20,000`.
pub(super) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_numbers() {
        let runs = [
            Figures::default()
                .with("tasks_per_s", 3.0)
                .with("seconds", 1.0),
            Figures::default()
                .with("tasks_per_s", 1.0)
                .with("seconds", 3.0),
            Figures::default()
                .with("tasks_per_s", 2.0)
                .with("seconds", 2.0),
        ];
        let median = Figures::median(&runs);
        assert_eq!(median.get("tasks_per_s"), Some(2.0));
        assert_eq!(median.get("seconds"), Some(2.0));
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
        assert_eq!(number("p50_us", 812.4), "812");
        assert_eq!(number("seconds", 0.41234), "0.412");
    }

    #[test]
    fn ratios_are_medians_of_paired_runs() {
        let run = |rask: f64, floor: f64| {
            (
                Figures::default().with("tasks_per_s", rask),
                Figures::default().with("tasks_per_s", floor),
            )
        };
        // Paired ratios 0.5, 0.9 and 0.8: the median is 0.8, where the ratio of the medians
        // (900 / 1000) would be 0.9.
        let runs = [run(500.0, 1000.0), run(900.0, 1000.0), run(1600.0, 2000.0)];
        let (rask, floor): (Vec<_>, Vec<_>) = runs.into_iter().unzip();
        let row = Row::new(Workload::Throughput, "x".into(), &rask, &floor);
        assert_eq!(row.rask.get("tasks_per_s"), Some(900.0));
        assert_eq!(row.floor.get("tasks_per_s"), Some(1000.0));
        let ratio = row.ratios()[0].1.unwrap();
        assert!((ratio - 0.8).abs() < 1e-9, "{ratio}");
    }

    #[test]
    fn result_lines_carry_ratios() {
        let row = Row::new(
            Workload::Throughput,
            "200 inc".into(),
            &[Figures::default()
                .with("tasks", 200.0)
                .with("tasks_per_s", 800.0)],
            &[Figures::default()
                .with("tasks", 200.0)
                .with("tasks_per_s", 1000.0)],
        );
        let [rask, floor] = row.result_lines();
        assert_eq!(
            rask,
            "RESULT system=rask workload=throughput tasks=200 tasks_per_s=800 ratio=0.800"
        );
        assert_eq!(
            floor,
            "RESULT system=floor workload=throughput tasks=200 tasks_per_s=1000"
        );
    }
}
