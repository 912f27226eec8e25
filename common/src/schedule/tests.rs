use std::time::Duration;

use jiff::civil::date;
use jiff::tz::TimeZone;

use super::*;

fn ms(tz: &str, y: i16, mo: i8, d: i8, h: i8, mi: i8) -> u64 {
    let zoned = date(y, mo, d)
        .at(h, mi, 0, 0)
        .to_zoned(TimeZone::get(tz).unwrap())
        .unwrap();
    u64::try_from(zoned.timestamp().as_millisecond()).unwrap()
}

fn utc_offset_hours(tz: &str, at_ms: u64) -> i32 {
    let ts = jiff::Timestamp::from_millisecond(at_ms as i64).unwrap();
    ts.to_zoned(TimeZone::get(tz).unwrap()).offset().seconds() / 3600
}

fn schedule(timing: Timing, missed: Missed, created_ms: u64) -> Schedule {
    Schedule {
        name: "nightly".into(),
        timing,
        missed,
        paused: false,
        template: TaskMessage::new(TaskKey::new("template").unwrap(), "inc", vec![0x91, 1]),
        created_ms,
    }
}

#[test]
fn intervals_tick_from_their_anchor() {
    let timing = Timing::every(Duration::from_secs(30), 1_000).unwrap();
    assert_eq!(timing.next_after(0).unwrap(), Some(31_000));
    assert_eq!(timing.next_after(31_000).unwrap(), Some(61_000));
    assert_eq!(timing.next_after(31_001).unwrap(), Some(61_000));
    assert_eq!(
        timing.ticks_between(31_000, 121_000, 10).unwrap(),
        vec![61_000, 91_000, 121_000]
    );
    assert!(Timing::every(Duration::ZERO, 0).is_err());
}

#[test]
fn cron_ticks_in_its_time_zone() {
    let timing = Timing::cron("0 9 * * 1-5", Some("Europe/Paris")).unwrap();
    // Friday 2026-12-04 10:00 Paris: the next is Monday 09:00 Paris (08:00 UTC).
    let after = ms("Europe/Paris", 2026, 12, 4, 10, 0);
    assert_eq!(
        timing.next_after(after).unwrap(),
        Some(ms("UTC", 2026, 12, 7, 8, 0))
    );
    // Six fields: seconds first.
    let every_second = Timing::cron("* * * * * *", None).unwrap();
    assert_eq!(every_second.next_after(5_500).unwrap(), Some(6_000));
    assert_eq!(every_second.next_after(6_000).unwrap(), Some(7_000));
}

#[test]
fn a_daily_time_the_clocks_skip_runs_right_after_the_jump_once() {
    let timing = Timing::cron("30 2 * * *", Some("Europe/Paris")).unwrap();
    // 2026-03-29: Paris jumps from 02:00 to 03:00; 02:30 does not exist.
    let from = ms("Europe/Paris", 2026, 3, 28, 12, 0);
    let until = ms("Europe/Paris", 2026, 3, 30, 12, 0);
    let ticks = timing.ticks_between(from, until, 10).unwrap();
    assert_eq!(
        ticks,
        vec![
            ms("Europe/Paris", 2026, 3, 29, 3, 0),
            ms("Europe/Paris", 2026, 3, 30, 2, 30)
        ]
    );
}

#[test]
fn a_daily_time_the_clocks_repeat_runs_once() {
    let timing = Timing::cron("30 2 * * *", Some("Europe/Paris")).unwrap();
    // 2026-10-25: Paris goes back from 03:00 to 02:00; 02:30 happens twice.
    let from = ms("Europe/Paris", 2026, 10, 24, 12, 0);
    let until = ms("Europe/Paris", 2026, 10, 26, 12, 0);
    let ticks = timing.ticks_between(from, until, 10).unwrap();
    assert_eq!(ticks.len(), 2, "{ticks:?}");
    assert_eq!(
        utc_offset_hours("Europe/Paris", ticks[0]),
        2,
        "the first 02:30"
    );
    assert_eq!(ticks[1], ms("Europe/Paris", 2026, 10, 26, 2, 30));
}

#[test]
fn frequent_ticks_go_on_through_the_repeated_hour_without_gaps_or_doubles() {
    let timing = Timing::cron("*/30 * * * *", Some("Europe/Paris")).unwrap();
    let from = ms("UTC", 2026, 10, 24, 23, 0); // 01:00 Paris, summer time
    let until = from + 4 * 3_600_000;
    let ticks = timing.ticks_between(from, until, 100).unwrap();
    // Every 30 minutes of real time, the repeated hour included: 8 ticks in 4 hours.
    assert_eq!(ticks.len(), 8, "{ticks:?}");
    assert!(
        ticks.windows(2).all(|w| w[1] - w[0] == 1_800_000),
        "{ticks:?}"
    );
}

#[test]
fn bad_patterns_zones_and_names_are_refused_with_the_reason() {
    let e = Timing::cron("61 * * * *", None).unwrap_err().to_string();
    assert!(e.contains("61 * * * *"), "{e}");
    let e = Timing::cron("* * * * *", Some("Mars/Olympus"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("Mars/Olympus"), "{e}");
    assert!(Schedule::check_name("nightly-report_2.v1").is_ok());
    for bad in ["", "a b", "a/b", "é", &"x".repeat(65)] {
        assert!(Schedule::check_name(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn tick_keys_are_the_same_everywhere_and_valid() {
    let s = schedule(
        Timing::every(Duration::from_secs(1), 0).unwrap(),
        Missed::Once,
        0,
    );
    assert_eq!(s.tick_key(5_000).as_str(), "inc-nightly-5000");
    let message = s.tick_message(5_000);
    assert_eq!(message.key.as_str(), "inc-nightly-5000");
    assert_eq!(message.args, s.template.args);
    let mut long = s.clone();
    long.template.function = "f".repeat(300);
    assert!(long.tick_key(u64::MAX).as_str().len() <= crate::keys::MAX_KEY_LEN);
}

#[test]
fn recent_ticks_are_due_whatever_the_policy() {
    let every = Timing::every(Duration::from_secs(1), 0).unwrap(); // ticks at 1 s, 2 s, ...
    for missed in [Missed::Skip, Missed::Once, Missed::All] {
        let s = schedule(every.clone(), missed, 0);
        // Two ticks since the last check, both within the tolerance: both run.
        let (due, latest) = s.due(Some(10_000), 12_500, Duration::from_secs(5)).unwrap();
        assert_eq!(due, vec![11_000, 12_000], "{missed}");
        assert_eq!(latest, Some(12_000));
        // Nothing ticked.
        let (due, latest) = s.due(Some(12_000), 12_900, Duration::from_secs(5)).unwrap();
        assert!(due.is_empty() && latest.is_none());
    }
}

#[test]
fn missed_ticks_follow_the_policy() {
    let every = Timing::every(Duration::from_secs(1), 0).unwrap();
    let tolerance = Duration::from_secs(5);
    // Last tick at 10 s; now 100.5 s: 11..=95 s missed, 96..=100 s recent.
    let recent: Vec<u64> = (96..=100).map(|s| s * 1000).collect();
    let due = |missed| {
        schedule(every.clone(), missed, 0)
            .due(Some(10_000), 100_500, tolerance)
            .unwrap()
    };
    assert_eq!(due(Missed::Skip), (recent.clone(), Some(100_000)));
    let mut once = vec![95_000];
    once.extend(&recent);
    assert_eq!(due(Missed::Once), (once, Some(100_000)));
    let all: Vec<u64> = (11..=100).map(|s| s * 1000).collect();
    assert_eq!(due(Missed::All), (all, Some(100_000)));
}

#[test]
fn all_missed_ticks_come_in_bounded_checks_in_order() {
    let every = Timing::every(Duration::from_millis(10), 0).unwrap();
    let s = schedule(every, Missed::All, 0);
    // 100,000 ticks missed: the first check takes the first MAX_TICKS_PER_CHECK.
    let (due, latest) = s.due(Some(0), 1_000_000, Duration::from_secs(1)).unwrap();
    assert_eq!(due.len(), MAX_TICKS_PER_CHECK);
    assert_eq!(due[0], 10);
    assert_eq!(latest, Some(10 * MAX_TICKS_PER_CHECK as u64));
}

#[test]
fn a_new_schedule_does_not_run_ticks_from_before_it_existed() {
    let s = schedule(
        Timing::every(Duration::from_secs(1), 0).unwrap(),
        Missed::All,
        50_000,
    );
    let (due, _) = s.due(None, 52_500, Duration::from_secs(5)).unwrap();
    assert_eq!(due, vec![51_000, 52_000]);
}

#[test]
fn paused_schedules_record_their_ticks_without_running_them() {
    let mut s = schedule(
        Timing::every(Duration::from_secs(1), 0).unwrap(),
        Missed::All,
        0,
    );
    s.paused = true;
    let (due, latest) = s.due(Some(10_000), 20_500, Duration::from_secs(5)).unwrap();
    assert!(due.is_empty());
    assert_eq!(latest, Some(20_000));
}

#[test]
fn records_round_trip() {
    let s = schedule(
        Timing::cron("*/5 * * * *", Some("Europe/Paris")).unwrap(),
        Missed::Skip,
        7,
    );
    assert_eq!(Schedule::decode(&s.encode().unwrap()).unwrap(), s);
    assert_eq!("all".parse::<Missed>().unwrap(), Missed::All);
    assert!("sometimes".parse::<Missed>().is_err());
}

#[test]
fn a_forged_interval_of_zero_is_an_error_not_a_panic() {
    let mut s = schedule(
        Timing::every(Duration::from_secs(1), 0).unwrap(),
        Missed::All,
        0,
    );
    s.timing = Timing::Every {
        every_ms: 0,
        anchor_ms: 0,
    };
    assert!(s.due(Some(0), 10_000, Duration::from_secs(5)).is_err());
    assert!(s.timing.next_after(5).is_err());
}
