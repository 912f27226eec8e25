//! The tail of a log file, for error messages: when a server fails to
//! start, the reason is almost always in its last lines.

use std::path::Path;

/// How many lines of a log an error message quotes.
pub(crate) const TAIL_LINES: usize = 20;

/// The last `lines` lines of each existing file in `paths`, each block
/// headed by the file's name; a note if none could be read.
pub(crate) fn tail(paths: &[&Path], lines: usize) -> String {
    let mut out = String::new();
    for path in paths {
        let Ok(bytes) = std::fs::read(path) else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        let all: Vec<&str> = text.lines().collect();
        let start = all.len().saturating_sub(lines);
        out.push_str(&format!("\n--- last lines of {} ---\n", path.display()));
        for line in &all[start..] {
            out.push_str(line);
            out.push('\n');
        }
    }
    if out.is_empty() {
        let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        out = format!(" (no log yet at {})", names.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_quotes_the_last_lines_and_notes_missing_logs() {
        let dir = std::env::temp_dir().join(format!("rask-logs-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let log = dir.join("a.log");
        std::fs::write(&log, "one\ntwo\nthree\n").expect("write log");
        let missing = dir.join("missing.log");

        let text = tail(&[&log, &missing], 2);
        assert!(text.contains("two\nthree\n"));
        assert!(!text.contains("one"));
        assert!(tail(&[&missing], 2).contains("no log yet"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
