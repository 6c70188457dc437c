//! # laminar-sql
//!
//! The streaming SQL front end of LaminarDB.
//!
//! ```text
//!  SQL text ─► vars (${NAME}) ─► split (;) ─► parser (streaming DDL on sqlparser)
//!        ─► plan (DataFusion SQL planner + type coercion) ─► lower (streaming operator chains)
//! ```
//!
//! Read first: [`parser::StreamingStatement`] (what users can write), [`plan::Planner`] (how a
//! SELECT becomes a [`plan::StreamPlan`]) and [`SqlError`] (what users see when it fails).

pub mod error;
pub mod explain;
pub mod parser;
pub mod plan;

pub use error::{SqlError, did_you_mean};
pub use parser::{StreamingStatement, parse_statement, split_statements, substitute_vars};
pub use plan::{Planner, StreamPlan};
