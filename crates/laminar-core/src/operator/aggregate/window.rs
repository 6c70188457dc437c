//! Window definitions and the assignment of event times to windows.
//!
//! Every window is a half-open interval `[start, end)` of epoch milliseconds. Tumbling,
//! hopping and cumulating windows are fixed by the event time alone; a row's windows are
//! derived from one *anchor* per row (rows with the same anchor share exactly the same
//! windows), so a batch is grouped by anchor once and each group is fed to its windows
//! without per-row work. Session windows depend on the data and are handled by the
//! session state instead.

/// A window definition from `GROUP BY tumble(..)` / `hop(..)` / `session(..)` or a window
/// table-valued function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSpec {
    /// `[k*size + offset, (k+1)*size + offset)`.
    Tumble {
        /// Window length in milliseconds (> 0).
        size: i64,
        /// Alignment offset in milliseconds.
        offset: i64,
    },
    /// Windows of length `size` starting every `slide`.
    Hop {
        /// Distance between window starts (> 0).
        slide: i64,
        /// Window length (>= slide).
        size: i64,
        /// Alignment offset.
        offset: i64,
    },
    /// Windows `[p, p + j*step)` for `j = 1..=size/step` within each period `p` of `size`.
    Cumulate {
        /// Growth step (> 0, divides `size`).
        step: i64,
        /// Period and largest window length.
        size: i64,
        /// Alignment offset.
        offset: i64,
    },
    /// Per-key sessions closed by an inactivity gap.
    Session {
        /// Inactivity gap in milliseconds (> 0).
        gap: i64,
    },
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Floors `ts - offset` to a multiple of `unit` and adds `offset` back.
fn align(ts: i64, unit: i64, offset: i64) -> i64 {
    (ts - offset).div_euclid(unit) * unit + offset
}

impl WindowSpec {
    /// Checks the parameters; the message says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        let positive = |what: &str, v: i64| {
            if v <= 0 {
                Err(format!("window {what} must be positive, got {v} ms"))
            } else {
                Ok(())
            }
        };
        match *self {
            WindowSpec::Tumble { size, .. } => positive("size", size),
            WindowSpec::Hop { slide, size, .. } => {
                positive("slide", slide)?;
                positive("size", size)?;
                if size < slide {
                    return Err(format!(
                        "hop window size ({size} ms) is smaller than its slide ({slide} ms); rows between windows would be lost"
                    ));
                }
                Ok(())
            }
            WindowSpec::Cumulate { step, size, .. } => {
                positive("step", step)?;
                positive("size", size)?;
                if size % step != 0 {
                    return Err(format!(
                        "cumulate window size ({size} ms) must be a multiple of its step ({step} ms)"
                    ));
                }
                Ok(())
            }
            WindowSpec::Session { gap } => positive("gap", gap),
        }
    }

    /// True for session windows (data-driven, per key).
    pub fn is_session(&self) -> bool {
        matches!(self, WindowSpec::Session { .. })
    }

    /// The longest distance between a window's start and its end (the session gap for
    /// sessions, where it is the length of a session started by one row).
    pub fn span(&self) -> i64 {
        match *self {
            WindowSpec::Tumble { size, .. }
            | WindowSpec::Hop { size, .. }
            | WindowSpec::Cumulate { size, .. } => size,
            WindowSpec::Session { gap } => gap,
        }
    }

    /// The anchor of event time `ts`: rows with equal anchors belong to the same windows.
    pub fn anchor(&self, ts: i64) -> i64 {
        match *self {
            WindowSpec::Tumble { size, offset } => align(ts, size, offset),
            // Rows in one gcd(slide, size) bucket share all their windows.
            WindowSpec::Hop {
                slide,
                size,
                offset,
            } => align(ts, gcd(slide, size), offset),
            // The end of the smallest window containing `ts`.
            WindowSpec::Cumulate { step, offset, .. } => align(ts, step, offset) + step,
            WindowSpec::Session { .. } => ts,
        }
    }

    /// The latest end among the windows of `anchor` (a row is too late when even this
    /// window is closed).
    pub fn last_end(&self, anchor: i64) -> i64 {
        match *self {
            WindowSpec::Tumble { size, .. } => anchor + size,
            WindowSpec::Hop {
                slide,
                size,
                offset,
            } => align(anchor, slide, offset) + size,
            WindowSpec::Cumulate { step, size, offset } => {
                align(anchor - step, size, offset) + size
            }
            WindowSpec::Session { gap } => anchor + gap,
        }
    }

    /// Calls `f(start, end)` for every window of `anchor`, ordered by end.
    pub fn for_each_window(&self, anchor: i64, mut f: impl FnMut(i64, i64)) {
        match *self {
            WindowSpec::Tumble { size, .. } => f(anchor, anchor + size),
            WindowSpec::Hop {
                slide,
                size,
                offset,
            } => {
                // The latest start at or before the anchor, and earlier starts whose window
                // still covers the anchor's bucket (start + size > anchor).
                let mut starts = Vec::with_capacity((size / slide + 1) as usize);
                let mut start = align(anchor, slide, offset);
                while start + size > anchor {
                    starts.push(start);
                    start -= slide;
                }
                for &start in starts.iter().rev() {
                    f(start, start + size);
                }
            }
            WindowSpec::Cumulate { step, size, offset } => {
                let period = align(anchor - step, size, offset);
                let mut end = anchor;
                while end <= period + size {
                    f(period, end);
                    end += step;
                }
            }
            WindowSpec::Session { gap } => f(anchor, anchor + gap),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows(spec: WindowSpec, ts: i64) -> Vec<(i64, i64)> {
        let mut out = Vec::new();
        spec.for_each_window(spec.anchor(ts), |s, e| out.push((s, e)));
        out
    }

    #[test]
    fn tumble_is_epoch_aligned_with_optional_offset() {
        let t = WindowSpec::Tumble {
            size: 5000,
            offset: 0,
        };
        assert_eq!(windows(t, 1000), vec![(0, 5000)]);
        assert_eq!(windows(t, 5000), vec![(5000, 10000)]);
        assert_eq!(windows(t, -1), vec![(-5000, 0)]);
        let shifted = WindowSpec::Tumble {
            size: 5000,
            offset: 1000,
        };
        assert_eq!(windows(shifted, 500), vec![(-4000, 1000)]);
        assert_eq!(windows(shifted, 1000), vec![(1000, 6000)]);
    }

    #[test]
    fn hop_assigns_every_covering_window() {
        // SPEC 2.8: hop(ts, 5 s, 10 s), ts 7000 -> starts 0 and 5000.
        let h = WindowSpec::Hop {
            slide: 5000,
            size: 10000,
            offset: 0,
        };
        assert_eq!(windows(h, 7000), vec![(0, 10000), (5000, 15000)]);
        assert_eq!(h.last_end(h.anchor(7000)), 15000);
        // A size that is not a multiple of the slide.
        let h = WindowSpec::Hop {
            slide: 3000,
            size: 4000,
            offset: 0,
        };
        assert_eq!(windows(h, 3500), vec![(0, 4000), (3000, 7000)]);
        assert_eq!(windows(h, 4500), vec![(3000, 7000)]);
        assert_eq!(windows(h, 2500), vec![(0, 4000)]);
        assert_eq!(windows(h, 3000), vec![(0, 4000), (3000, 7000)]);
        assert_eq!(h.last_end(h.anchor(3500)), 7000);
    }

    #[test]
    fn cumulate_grows_within_its_period() {
        let c = WindowSpec::Cumulate {
            step: 1000,
            size: 3000,
            offset: 0,
        };
        assert_eq!(windows(c, 500), vec![(0, 1000), (0, 2000), (0, 3000)]);
        assert_eq!(windows(c, 1500), vec![(0, 2000), (0, 3000)]);
        assert_eq!(windows(c, 2999), vec![(0, 3000)]);
        assert_eq!(
            windows(c, 3000),
            vec![(3000, 4000), (3000, 5000), (3000, 6000)]
        );
        assert_eq!(c.last_end(c.anchor(1500)), 3000);
    }

    #[test]
    fn invalid_parameters_are_explained() {
        let bad = WindowSpec::Hop {
            slide: 10,
            size: 5,
            offset: 0,
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .contains("smaller than its slide")
        );
        let bad = WindowSpec::Tumble { size: 0, offset: 0 };
        assert!(bad.validate().unwrap_err().contains("must be positive"));
        let bad = WindowSpec::Cumulate {
            step: 3,
            size: 10,
            offset: 0,
        };
        assert!(bad.validate().unwrap_err().contains("multiple"));
    }
}
