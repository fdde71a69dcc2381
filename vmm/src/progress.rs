//! Progress of long work (`bench`, `soak`, `run --exercise`): on a terminal one live line,
//! rewritten in place, with the count, the rate, the time so far and the ETA; when stdout
//! is not a terminal a plain line now and then (logs and pipes get no carriage returns);
//! with `--quiet` nothing.
//!
//! Lines the work prints meanwhile go through [`Progress::println`], which clears the
//! live line first and redraws it after, so the two never interleave.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// One live line, rewritten in place (stdout is a terminal).
    Live,
    /// A plain line every [`PLAIN_PERIOD`] (stdout is a file or a pipe).
    Lines,
    /// Nothing (`--quiet`).
    Quiet,
}

impl Output {
    /// [`Output::Quiet`] if `quiet`, else live on a terminal and plain lines otherwise.
    pub fn detect(quiet: bool) -> Self {
        if quiet {
            Output::Quiet
        } else if std::io::stdout().is_terminal() {
            Output::Live
        } else {
            Output::Lines
        }
    }
}

/// How often a live line is redrawn at most.
const LIVE_PERIOD: Duration = Duration::from_millis(200);
/// How often a plain progress line is printed at most.
pub const PLAIN_PERIOD: Duration = Duration::from_secs(10);

/// Progress of one piece of work: `done` of `total` units (`total` 0: unknown).
#[derive(Debug)]
pub struct Progress {
    what: String,
    unit: String,
    total: u64,
    done: u64,
    detail: String,
    start: Instant,
    last: Option<Instant>,
    shown: bool,
    out: Output,
}

impl Progress {
    /// Progress of `what` in `unit`s (plural, e.g. "samples"), `total` of them (0 if
    /// unknown), shown as `out` says.
    pub fn new(what: &str, unit: &str, total: u64, out: Output) -> Self {
        Progress {
            what: what.to_string(),
            unit: unit.to_string(),
            total,
            done: 0,
            detail: String::new(),
            start: Instant::now(),
            last: None,
            shown: false,
            out,
        }
    }

    /// A progress that shows nothing (library callers, tests).
    pub fn hidden() -> Self {
        Self::new("", "", 0, Output::Quiet)
    }

    /// How it is shown.
    pub fn output(&self) -> Output {
        self.out
    }

    /// Start counting again for another phase of the same work.
    pub fn phase(&mut self, what: &str, unit: &str, total: u64) {
        self.clear();
        self.what = what.to_string();
        self.unit = unit.to_string();
        self.total = total;
        self.done = 0;
        self.detail.clear();
        self.start = Instant::now();
        self.last = None;
        self.update(0, "");
    }

    /// `done` units are done; `detail` says what is going on (may be empty).
    pub fn update(&mut self, done: u64, detail: &str) {
        self.done = done;
        if detail != self.detail {
            self.detail = detail.to_string();
        }
        let now = Instant::now();
        let period = match self.out {
            Output::Quiet => return,
            Output::Live => LIVE_PERIOD,
            Output::Lines => PLAIN_PERIOD,
        };
        let finished = self.total > 0 && done >= self.total;
        if self.last.is_some_and(|t| now - t < period) && !(finished && self.out == Output::Live) {
            return;
        }
        // Plain lines: the first one only after a period, so short work prints nothing.
        if self.out == Output::Lines && self.last.is_none() {
            self.last = Some(now);
            return;
        }
        self.last = Some(now);
        self.draw();
    }

    /// One more unit done.
    pub fn inc(&mut self, detail: &str) {
        self.update(self.done + 1, detail);
    }

    /// Print `line` as the work's own output, above the live line.
    pub fn println(&mut self, line: &str) {
        self.clear();
        println!("{line}");
        if self.out == Output::Live && self.last.is_some() {
            self.draw();
        }
    }

    /// Remove the live line (at the end of the work).
    pub fn finish(&mut self) {
        self.clear();
    }

    fn clear(&mut self) {
        if self.shown {
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "\r\x1b[K");
            let _ = out.flush();
            self.shown = false;
        }
    }

    fn draw(&mut self) {
        let line = self.line(self.start.elapsed());
        let mut out = std::io::stdout().lock();
        match self.out {
            Output::Live => {
                let _ = write!(out, "\r\x1b[K{line}");
                self.shown = true;
            }
            Output::Lines => {
                let _ = writeln!(out, "{line}");
            }
            Output::Quiet => {}
        }
        let _ = out.flush();
    }

    /// The progress line after `elapsed`.
    pub fn line(&self, elapsed: Duration) -> String {
        let secs = elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            self.done as f64 / secs
        } else {
            0.0
        };
        let mut s = format!("{}: {}", self.what, self.done);
        if self.total > 0 {
            let pct = 100.0 * self.done as f64 / self.total as f64;
            s += &format!("/{} {} ({pct:.0}%)", self.total, self.unit);
        } else {
            s += &format!(" {}", self.unit);
        }
        if self.done > 0 {
            s += &format!(", {} {}/s", short_rate(rate), self.unit);
        }
        s += &format!(", {} elapsed", clock(elapsed));
        if self.total > 0 && self.done > 0 && self.done < self.total {
            let left = (self.total - self.done) as f64 / rate.max(1e-9);
            s += &format!(", ETA {}", clock(Duration::from_secs_f64(left.min(1e7))));
        }
        if !self.detail.is_empty() {
            s += &format!(" · {}", self.detail);
        }
        s
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.clear();
    }
}

fn short_rate(r: f64) -> String {
    if r >= 100.0 {
        format!("{r:.0}")
    } else if r >= 1.0 {
        format!("{r:.1}")
    } else {
        format!("{r:.2}")
    }
}

/// `m:ss`, or `h:mm:ss` from an hour.
pub fn clock(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_say_count_rate_and_eta() {
        let mut p = Progress::new("soak", "cycles", 1000, Output::Quiet);
        p.update(250, "3 live chunks");
        assert_eq!(
            p.line(Duration::from_secs(50)),
            "soak: 250/1000 cycles (25%), 5.0 cycles/s, 0:50 elapsed, ETA 2:30 · 3 live chunks"
        );
        let mut p = Progress::new("exercise", "s", 0, Output::Quiet);
        p.update(0, "waiting for the guest to populate lent memory");
        assert_eq!(
            p.line(Duration::from_secs(3725)),
            "exercise: 0 s, 1:02:05 elapsed · waiting for the guest to populate lent memory"
        );
    }

    #[test]
    fn quiet_prints_nothing_and_clock_reads() {
        let mut p = Progress::hidden();
        p.inc("x");
        assert!(!p.shown);
        assert_eq!(clock(Duration::from_secs(61)), "1:01");
    }
}
