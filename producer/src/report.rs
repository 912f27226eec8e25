//! Performance reports: one self-contained HTML file (inline SVG and CSS, no script, nothing
//! fetched) drawn from the task events of a time window (`rask report`, [`Client::report`]):
//! the task stream, throughput over time, a duration histogram per function, worker
//! utilization, and the failures with their messages. Like Dask's `performance_report`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use rask_common::events::{now_ms, Event, EventKind, WORKER_FLUSH};

use crate::client::Client;
use crate::error::Result;

/// Most stream entries read for one report.
const MAX_ENTRIES: usize = 100_000;
/// Most times a report around a block reads the events again, waiting for the workers'
/// last writes.
const SETTLE_ROUNDS: usize = 8;
/// Colors of functions, in order of their names.
const PALETTE: [&str; 8] = [
    "#3f7be0", "#2e9d5b", "#e08a3f", "#8e5bd6", "#d6455b", "#2bb3b3", "#b3a32b", "#6b7a8f",
];

impl Client {
    /// The performance report (an HTML page, see [`crate::report`](self)) of the task events
    /// of the last `since`.
    ///
    /// # Errors
    /// [`crate::Error::Common`] if Redis fails.
    pub async fn report_since(&self, since: Duration) -> Result<String> {
        let to = now_ms();
        let from = to.saturating_sub(u64::try_from(since.as_millis()).unwrap_or(u64::MAX));
        let events = self.events(None, Some(since), MAX_ENTRIES).await?;
        // From the first run or event in the window (not an empty stretch before it).
        let first = events
            .iter()
            .map(|e| e.started.unwrap_or(e.at).min(e.at))
            .min()
            .map_or(from, |first| first.saturating_sub(100));
        Ok(render(&events, from.max(first), to))
    }

    /// Runs `block` and writes the performance report of the task events recorded while it
    /// ran to the file `out` (as Dask's `performance_report` around a block); returns what
    /// `block` returned. Workers write events up to [`WORKER_FLUSH`] after the results, so
    /// the report is written once a read a little later finds no more events of the block
    /// (about 0.3 to 0.6 s after it ends).
    ///
    /// # Errors
    /// [`crate::Error::Common`] if Redis fails; [`crate::Error::Report`] if the file cannot be
    /// written.
    pub async fn report<F: std::future::Future>(&self, out: &Path, block: F) -> Result<F::Output> {
        let from = now_ms();
        let output = block.await;
        let to = now_ms();
        // Workers write the events of runs up to a flush interval after their results: read
        // again, a flush interval later, until a read finds no more of the block's events.
        let since_from = || Duration::from_millis(now_ms().saturating_sub(from) + 1);
        let of_block = |events: &[Event]| events.iter().filter(|e| e.at <= to).count();
        let mut events = self.events(None, Some(since_from()), MAX_ENTRIES).await?;
        for _ in 0..SETTLE_ROUNDS {
            tokio::time::sleep(WORKER_FLUSH + WORKER_FLUSH / 5).await;
            let again = self.events(None, Some(since_from()), MAX_ENTRIES).await?;
            let settled = of_block(&again) == of_block(&events);
            events = again;
            if settled {
                break;
            }
        }
        std::fs::write(out, render(&events, from, to)).map_err(|source| crate::Error::Report {
            path: out.to_path_buf(),
            source,
        })?;
        Ok(output)
    }
}

/// `text` with the HTML special characters escaped.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A run: an event that ended one (with its start and worker slot).
struct Run<'a> {
    event: &'a Event,
    start: u64,
    lane: String,
}

/// The report page of `events` in the window `from..=to` (Unix ms).
pub(crate) fn render(events: &[Event], from: u64, to: u64) -> String {
    let events: Vec<&Event> = events
        .iter()
        .filter(|e| e.at >= from && e.at <= to)
        .collect();
    let runs: Vec<Run<'_>> = events
        .iter()
        .filter(|e| {
            matches!(
                e.kind,
                EventKind::Succeeded | EventKind::Failed | EventKind::Retried
            )
        })
        .filter_map(|e| {
            Some(Run {
                event: e,
                start: e.started?,
                lane: format!("{} #{}", e.worker.as_deref()?, e.slot?),
            })
        })
        .collect();
    let functions: Vec<&str> = {
        let mut f: Vec<&str> = events.iter().map(|e| e.function.as_str()).collect();
        f.sort_unstable();
        f.dedup();
        f
    };
    let color = |function: &str| {
        let i = functions.iter().position(|f| *f == function).unwrap_or(0);
        PALETTE[i % PALETTE.len()]
    };
    let count = |kind: EventKind| events.iter().filter(|e| e.kind == kind).count();
    let span_ms = to.saturating_sub(from).max(1);
    let mut page = String::new();
    let _ = write!(
        page,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>rask performance report</title>
<style>body{{font:14px/1.4 system-ui,sans-serif;margin:20px;color:#1d2330;background:#f6f7f9}}
section{{background:#fff;border-radius:6px;padding:10px 14px;margin-bottom:16px;box-shadow:0 1px 2px #0002}}
h1{{font-size:20px}}h2{{font-size:15px;margin:0 0 8px}}table{{border-collapse:collapse}}
td,th{{padding:3px 8px;border-bottom:1px solid #eee;text-align:left}}td.num{{text-align:right}}
svg text{{font-size:10px;fill:#556}}.legend span{{margin-right:12px}}.legend i{{display:inline-block;width:10px;height:10px;margin-right:4px}}
.bar{{display:inline-block;height:10px;background:#3f7be0}}</style></head><body>
<h1>rask performance report</h1>
<p id="window">{} to {} ({:.1} s): <b id="tasks">{}</b> runs, <b id="succeeded">{}</b> succeeded, <b id="failed">{}</b> failed, <b id="retried">{}</b> retried, {} queued, {} cancelled, {} dead-lettered; {:.1} tasks/s.</p>
"#,
        time(from),
        time(to),
        span_ms as f64 / 1000.0,
        runs.len(),
        count(EventKind::Succeeded),
        count(EventKind::Failed),
        count(EventKind::Retried),
        count(EventKind::Queued),
        count(EventKind::Cancelled),
        count(EventKind::DeadLettered),
        (count(EventKind::Succeeded) + count(EventKind::Failed)) as f64 * 1000.0 / span_ms as f64,
    );
    page.push_str(r#"<section><h2>Functions</h2><div class="legend">"#);
    for f in &functions {
        let _ = write!(
            page,
            r#"<span><i style="background:{}"></i>{}</span>"#,
            color(f),
            escape(f)
        );
    }
    page.push_str("</div></section>");
    task_stream(&mut page, &runs, from, span_ms, &color);
    throughput(&mut page, &runs, from, span_ms);
    histograms(&mut page, &runs, &functions, &color);
    utilization(&mut page, &runs, span_ms);
    failures(&mut page, &events);
    page.push_str("</body></html>\n");
    page
}

/// Unix ms as RFC 3339 with ms, UTC (without a dependency: Howard Hinnant's days-to-civil).
fn time(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// An x axis in seconds from the window's start, with its unit, at `y`.
fn seconds_axis(page: &mut String, left: f64, width: f64, y: f64, span_ms: u64) {
    let span_s = span_ms as f64 / 1000.0;
    let step = [
        0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    ]
    .into_iter()
    .find(|s| span_s / s <= 10.0)
    .unwrap_or(600.0);
    let _ = write!(
        page,
        r##"<line x1="{left}" x2="{}" y1="{y}" y2="{y}" stroke="#889"/>"##,
        left + width
    );
    let mut t = 0.0;
    while t <= span_s + 1e-9 {
        let x = left + width * t / span_s;
        let _ = write!(
            page,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{y}" y2="{}" stroke="#889"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
            y + 4.0,
            y + 14.0,
            trim(t)
        );
        t += step;
    }
    let _ = write!(
        page,
        r#"<text x="{:.1}" y="{}" text-anchor="middle">time since the report's start (s)</text>"#,
        left + width / 2.0,
        y + 27.0
    );
}

fn trim(v: f64) -> String {
    let s = format!("{v:.1}");
    s.strip_suffix(".0").map(str::to_owned).unwrap_or(s)
}

fn task_stream(
    page: &mut String,
    runs: &[Run<'_>],
    from: u64,
    span_ms: u64,
    color: &dyn Fn(&str) -> &'static str,
) {
    let mut lanes: Vec<&str> = runs.iter().map(|r| r.lane.as_str()).collect();
    lanes.sort_unstable();
    lanes.dedup();
    let (left, width, lane_h) = (180.0, 800.0, 14.0);
    let height = lanes.len().max(1) as f64 * lane_h + 40.0;
    let _ = write!(
        page,
        r#"<section><h2>Task stream (a row per worker slot, a bar per run)</h2><svg id="task-stream" viewBox="0 0 1000 {height}" width="1000" height="{height}">"#
    );
    for (i, lane) in lanes.iter().enumerate() {
        let _ = write!(
            page,
            r#"<text x="{}" y="{}" text-anchor="end" class="lane">{}</text>"#,
            left - 6.0,
            i as f64 * lane_h + 10.0,
            escape(lane)
        );
    }
    let x = |t: u64| left + width * (t.saturating_sub(from) as f64 / span_ms as f64).min(1.0);
    for run in runs {
        let lane = lanes.iter().position(|l| *l == run.lane).unwrap_or(0);
        let (x0, x1) = (x(run.start), x(run.event.at));
        let fill = match run.event.kind {
            EventKind::Succeeded => color(&run.event.function),
            _ => "#c62828",
        };
        let _ = write!(
            page,
            r#"<rect class="run" x="{x0:.1}" y="{}" width="{:.1}" height="{}" fill="{fill}"><title>{} {} ({}, {} ms)</title></rect>"#,
            lane as f64 * lane_h + 1.0,
            (x1 - x0).max(1.0),
            lane_h - 3.0,
            escape(&run.event.function),
            run.event.key,
            run.event.kind,
            run.event.duration_ms.unwrap_or(0)
        );
    }
    seconds_axis(
        page,
        left,
        width,
        lanes.len().max(1) as f64 * lane_h + 2.0,
        span_ms,
    );
    page.push_str("</svg></section>");
}

fn throughput(page: &mut String, runs: &[Run<'_>], from: u64, span_ms: u64) {
    const BINS: usize = 60;
    let mut bins = [0u64; BINS];
    for run in runs {
        let i = (run.event.at.saturating_sub(from) * BINS as u64 / span_ms) as usize;
        bins[i.min(BINS - 1)] += 1;
    }
    let bin_s = span_ms as f64 / 1000.0 / BINS as f64;
    let max = bins.iter().copied().max().unwrap_or(0).max(1) as f64 / bin_s;
    let (left, width, height) = (90.0, 880.0, 120.0);
    let _ = write!(
        page,
        r##"<section><h2>Throughput (runs ended per second)</h2><svg id="throughput" viewBox="0 0 1000 {}" width="1000" height="{}"><text x="{}" y="10" text-anchor="end">{} tasks/s</text><text x="{}" y="{height}" text-anchor="end">0</text><text x="12" y="{}" transform="rotate(-90 12 {})" text-anchor="middle">tasks/s</text>"##,
        height + 40.0,
        height + 40.0,
        left - 4.0,
        trim(max),
        left - 4.0,
        height / 2.0,
        height / 2.0,
    );
    for (i, n) in bins.iter().enumerate() {
        let rate = *n as f64 / bin_s;
        let h = height * rate / max;
        let _ = write!(
            page,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="#3f7be0"/>"##,
            left + width * i as f64 / BINS as f64,
            height - h,
            width / BINS as f64 - 1.0
        );
    }
    seconds_axis(page, left, width, height + 2.0, span_ms);
    page.push_str("</svg></section>");
}

fn histograms(
    page: &mut String,
    runs: &[Run<'_>],
    functions: &[&str],
    color: &dyn Fn(&str) -> &'static str,
) {
    const BINS: usize = 20;
    page.push_str("<section><h2>Durations per function</h2>");
    for f in functions {
        let durations: Vec<u64> = runs
            .iter()
            .filter(|r| r.event.function == *f)
            .filter_map(|r| r.event.duration_ms)
            .collect();
        if durations.is_empty() {
            continue;
        }
        let top = durations.iter().copied().max().unwrap_or(0).max(1);
        let mut bins = [0u64; BINS];
        for d in &durations {
            bins[((d * BINS as u64) / (top + 1)) as usize] += 1;
        }
        let most = bins.iter().copied().max().unwrap_or(1).max(1) as f64;
        let (left, width, height) = (60.0, 400.0, 80.0);
        let _ = write!(
            page,
            r##"<svg class="histogram" data-function="{}" viewBox="0 0 500 {}" width="500" height="{}"><text x="{left}" y="10">{} ({} runs)</text><text x="{}" y="22" text-anchor="end">{} runs</text><text x="{}" y="{}" text-anchor="end">0</text>"##,
            escape(f),
            height + 50.0,
            height + 50.0,
            escape(f),
            durations.len(),
            left - 4.0,
            most,
            left - 4.0,
            height + 14.0,
        );
        for (i, n) in bins.iter().enumerate() {
            let h = (height - 14.0) * *n as f64 / most;
            let _ = write!(
                page,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{}"/>"#,
                left + width * i as f64 / BINS as f64,
                height + 14.0 - h,
                width / BINS as f64 - 1.0,
                color(f)
            );
        }
        let _ = write!(
            page,
            r##"<line x1="{left}" x2="{}" y1="{}" y2="{}" stroke="#889"/><text x="{left}" y="{}">0</text><text x="{}" y="{}" text-anchor="end">{top} ms</text><text x="{}" y="{}" text-anchor="middle">duration (ms)</text></svg>"##,
            left + width,
            height + 15.0,
            height + 15.0,
            height + 28.0,
            left + width,
            height + 28.0,
            left + width / 2.0,
            height + 42.0,
        );
    }
    page.push_str("</section>");
}

fn utilization(page: &mut String, runs: &[Run<'_>], span_ms: u64) {
    // Busy time per worker over its slots seen.
    let mut workers: BTreeMap<&str, (u64, std::collections::BTreeSet<u32>, usize)> =
        BTreeMap::new();
    for run in runs {
        let (Some(worker), Some(slot)) = (run.event.worker.as_deref(), run.event.slot) else {
            continue;
        };
        let entry = workers.entry(worker).or_default();
        entry.0 += run.event.at.saturating_sub(run.start);
        entry.1.insert(slot);
        entry.2 += 1;
    }
    page.push_str(r#"<section><h2>Worker utilization (busy time of the slots seen, over the window)</h2><table id="utilization"><tr><th>Worker</th><th>Slots</th><th>Runs</th><th>Busy</th><th></th></tr>"#);
    for (worker, (busy, slots, n)) in &workers {
        let share = *busy as f64 / (span_ms as f64 * slots.len().max(1) as f64);
        let _ = write!(
            page,
            r#"<tr><td>{}</td><td class="num">{}</td><td class="num">{n}</td><td class="num">{:.1} %</td><td><span class="bar" style="width:{:.0}px"></span></td></tr>"#,
            escape(worker),
            slots.len(),
            100.0 * share,
            200.0 * share.min(1.0)
        );
    }
    page.push_str("</table></section>");
}

fn failures(page: &mut String, events: &[&Event]) {
    page.push_str(r#"<section><h2>Failures</h2><table id="failures"><tr><th>When</th><th>Kind</th><th>Function</th><th>Key</th><th>Worker</th><th>Message</th></tr>"#);
    let failed: Vec<&&Event> = events
        .iter()
        .filter(|e| {
            matches!(
                e.kind,
                EventKind::Failed | EventKind::Retried | EventKind::DeadLettered
            )
        })
        .collect();
    for e in &failed {
        let _ = write!(
            page,
            r#"<tr class="failure"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            time(e.at),
            e.kind,
            escape(&e.function),
            e.key,
            escape(e.worker.as_deref().unwrap_or("-")),
            escape(e.error.as_deref().unwrap_or(""))
        );
    }
    if failed.is_empty() {
        page.push_str(r#"<tr><td colspan="6">no failures</td></tr>"#);
    }
    page.push_str("</table></section>");
}

#[cfg(test)]
mod tests {
    use super::*;
    use rask_common::TaskKey;

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(time(1_765_000_000_123), "2025-12-06T05:46:40.123Z");
    }

    #[test]
    fn the_page_escapes_messages_and_draws_each_run() {
        let mut ok = Event::new(EventKind::Succeeded, TaskKey::new("inc-1").unwrap(), "inc");
        ok.at = 1500;
        ok.started = Some(1200);
        ok.worker = Some("w".into());
        ok.slot = Some(0);
        ok.duration_ms = Some(300);
        let mut bad = Event {
            kind: EventKind::Failed,
            key: TaskKey::new("fail-1").unwrap(),
            function: "fail".into(),
            ..ok.clone()
        }
        .with_error("<script>x</script>");
        bad.at = 1600;
        let page = render(&[ok, bad], 1000, 2000);
        assert_eq!(page.matches(r#"class="run""#).count(), 2);
        assert!(page.contains("&lt;script&gt;x&lt;/script&gt;"));
        assert!(!page.contains("<script"));
        assert!(page.contains(r#"<b id="failed">1</b>"#));
        assert!(page.contains("duration (ms)") && page.contains("tasks/s"));
    }
}
