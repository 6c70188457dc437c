//! # laminar-core
//!
//! The streaming engine of LaminarDB: the messages that travel on every edge, event time and
//! watermarks, the operators, and the runtime that executes operator graphs on worker threads.
//!
//! ```text
//!  push API / connectors
//!        │  Message::Batch / Watermark / End
//!        ▼
//!  [source node] ──► [operator node] ──► [operator node] ──► subscribers, sinks
//!   (event time,      (stateless filter/    ...
//!    watermark         projection, union)
//!    generation)
//! ```
//!
//! Read first: [`message::Message`] (what flows), [`time::WatermarkGenerator`] (how event time
//! becomes watermarks), [`operator::Operator`] (the contract every operator implements) and
//! [`runtime::Runtime`] (how nodes are scheduled on workers with bounded queues).

pub mod error;
pub mod message;
pub mod metrics;
pub mod operator;
pub mod record;
pub mod runtime;
pub mod snapshot;
pub mod table;
pub mod time;

pub use arrow;
pub use error::{CoreError, Result};
pub use message::{ChangeOp, Message, OP_COLUMN};
