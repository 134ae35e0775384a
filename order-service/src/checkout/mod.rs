//! The checkout: `POST /checkout` runs a saga (reserve → charge → complete, undoing what was
//! done when it cannot finish) under the request's Idempotency-Key.
//!
//! Layout: [`core`] the decisions, pure and unit-tested; [`saga`] makes the calls and carries
//! the decisions out; [`runner`] runs a saga under its leases and settles the key; [`recovery`]
//! finishes checkouts whose runner died; [`clients`] typed calls to stock and payment;
//! [`store`] the order's writes, one `.lua` script each beside it; [`routes`] the handler;
//! [`spans`] the saga's trace spans.

pub mod clients;
pub mod core;
pub mod recovery;
pub mod routes;
pub mod runner;
pub mod saga;
#[cfg(test)]
mod script_tests;
pub mod spans;
pub mod store;
