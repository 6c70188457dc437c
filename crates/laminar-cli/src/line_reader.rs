//! The shell's line reader: rustyline with a history kept in `~/.laminardb_history`.
//!
//! rustyline replaces the process's SIGINT handler for as long as an editor exists, which
//! would hide Ctrl-C from [`crate::signals`] while a live query prints. So an editor exists
//! only while a line is read (where Ctrl-C is a key and clears the input); the history
//! moves from one editor to the next.

use std::path::PathBuf;

use rustyline::history::{DefaultHistory, History};
use rustyline::{Config, DefaultEditor, Editor, Result};

/// Reads lines with editing and history.
pub(crate) struct LineReader {
    history: DefaultHistory,
    path: Option<PathBuf>,
}

impl LineReader {
    /// A reader whose history starts with the saved one (a missing or unreadable file is
    /// ignored).
    pub(crate) fn new() -> Self {
        let mut history = DefaultHistory::new();
        let path = history_path();
        if let Some(p) = &path {
            let _ = history.load(p);
        }
        LineReader { history, path }
    }

    /// Reads one line.
    pub(crate) fn read(&mut self, prompt: &str) -> Result<String> {
        let history = std::mem::take(&mut self.history);
        let mut editor: DefaultEditor = Editor::with_history(Config::default(), history)?;
        let line = editor.readline(prompt);
        self.history = std::mem::take(editor.history_mut());
        line
    }

    /// Adds an entry to the history.
    pub(crate) fn remember(&mut self, entry: &str) {
        let _ = self.history.add(entry);
    }

    /// Saves the history (errors are ignored).
    pub(crate) fn save(&mut self) {
        if let Some(p) = &self.path {
            let _ = self.history.save(p);
        }
    }
}

fn history_path() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").or_else(|| std::env::var_os("USERPROFILE"))?;
    Some(PathBuf::from(home).join(".laminardb_history"))
}
