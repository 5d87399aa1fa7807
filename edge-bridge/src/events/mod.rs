//! Events up: every sale the POS submits is committed to the SQLite outbox before it is
//! answered, published to JetStream in order, and kept until the broker's watermark covers it.
//!
//! - [`draft`]: what the POS submits, checked against the wire contract.
//! - [`outbox`]: the SQLite outbox: seqs, limits, pruning under the watermark.
//! - [`publisher`]: drains the outbox to JetStream, marking rows sent after the publish ack.
//! - [`resend`]: rewinds rows sent but not covered, so they are published again.
//! - [`watermark`]: follows the broker's watermark for this device.

pub mod draft;
pub mod outbox;
pub mod publisher;
pub mod resend;
pub mod watermark;
