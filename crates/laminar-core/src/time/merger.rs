//! Combining the watermarks of several inputs.

use crate::message::NO_WATERMARK;

#[derive(Debug, Clone, Copy)]
struct InputState {
    watermark: i64,
    idle: bool,
}

/// Tracks the watermark of each input of a fan-in operator.
///
/// The output watermark is the minimum over inputs that are not idle; when every input is
/// idle it is the maximum of their watermarks. The output never decreases.
#[derive(Debug, Clone)]
pub struct WatermarkMerger {
    inputs: Vec<InputState>,
    output: i64,
}

impl WatermarkMerger {
    /// A merger for `n` inputs, none of which has a watermark yet.
    pub fn new(n: usize) -> Self {
        WatermarkMerger {
            inputs: vec![
                InputState {
                    watermark: NO_WATERMARK,
                    idle: false,
                };
                n
            ],
            output: NO_WATERMARK,
        }
    }

    /// The current output watermark.
    pub fn current(&self) -> i64 {
        self.output
    }

    /// Adds an input (for example a new upstream of a union); returns its index.
    pub fn add_input(&mut self) -> usize {
        self.inputs.push(InputState {
            watermark: NO_WATERMARK,
            idle: false,
        });
        self.inputs.len() - 1
    }

    /// Each input's watermark and idleness, and the output (for snapshots).
    pub fn state(&self) -> (Vec<(i64, bool)>, i64) {
        (
            self.inputs.iter().map(|i| (i.watermark, i.idle)).collect(),
            self.output,
        )
    }

    /// Restores [`WatermarkMerger::state`]; the input count must match.
    pub fn restore(&mut self, inputs: &[(i64, bool)], output: i64) -> bool {
        if inputs.len() != self.inputs.len() {
            return false;
        }
        for (state, &(watermark, idle)) in self.inputs.iter_mut().zip(inputs) {
            state.watermark = watermark;
            state.idle = idle;
        }
        self.output = output;
        true
    }

    /// True when every input is idle.
    pub fn all_idle(&self) -> bool {
        !self.inputs.is_empty() && self.inputs.iter().all(|i| i.idle)
    }

    /// Marks the input active again (it sent data).
    pub fn mark_active(&mut self, input: usize) {
        if let Some(state) = self.inputs.get_mut(input) {
            state.idle = false;
        }
    }

    /// Records a watermark of one input (which also makes it active); returns the new output
    /// watermark if it advanced.
    pub fn update(&mut self, input: usize, watermark: i64) -> Option<i64> {
        if let Some(state) = self.inputs.get_mut(input) {
            state.idle = false;
            state.watermark = state.watermark.max(watermark);
        }
        self.recompute()
    }

    /// Marks one input idle; returns the new output watermark if it advanced.
    pub fn set_idle(&mut self, input: usize) -> Option<i64> {
        if let Some(state) = self.inputs.get_mut(input) {
            state.idle = true;
        }
        self.recompute()
    }

    fn recompute(&mut self) -> Option<i64> {
        let active_min = self
            .inputs
            .iter()
            .filter(|i| !i.idle)
            .map(|i| i.watermark)
            .min();
        let candidate = match active_min {
            Some(min) => min,
            None => self
                .inputs
                .iter()
                .map(|i| i.watermark)
                .max()
                .unwrap_or(NO_WATERMARK),
        };
        if candidate > self.output {
            self.output = candidate;
            Some(candidate)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_over_inputs() {
        // SPEC 3 AC: sources at 5000 and 9000 -> W 5000.
        let mut m = WatermarkMerger::new(2);
        assert_eq!(m.update(1, 9000), None, "input 0 has no watermark yet");
        assert_eq!(m.update(0, 5000), Some(5000));
        assert_eq!(m.current(), 5000);
    }

    #[test]
    fn idle_inputs_do_not_hold_back_and_output_never_decreases() {
        let mut m = WatermarkMerger::new(2);
        m.update(0, 100);
        assert_eq!(m.set_idle(1), Some(100));
        assert_eq!(m.update(0, 200), Some(200));
        // Input 1 resumes behind: output stays.
        assert_eq!(m.update(1, 50), None);
        assert_eq!(m.current(), 200);
        // All idle: max of their watermarks.
        m.set_idle(1);
        assert_eq!(m.set_idle(0), None);
        assert!(m.all_idle());
    }
}
