//! Why a round of the commands downlink failed ([`crate::commands::executor`]). Each failure
//! ends the round; the next one, after the backoff, asks for the unfinished commands again and
//! the ledger answers any already run. The message carries the cause, said once.

use async_nats::jetstream::context::PublishError;

#[derive(Debug, thiserror::Error)]
pub enum CommandsError {
    /// The live or copies subscription was not made.
    #[error("subscribing to {subject}: {source}")]
    Subscribe {
        subject: String,
        #[source]
        source: async_nats::SubscribeError,
    },
    /// The request for the unfinished commands did not go out.
    #[error("command catch-up request: {0}")]
    CatchUpRequest(#[source] async_nats::PublishError),
    /// The ledger or the applied revision was not read or written.
    #[error("SQLite: {0}")]
    Ledger(#[from] sqlx::Error),
    /// The outcome is recorded but its ack was not sent; tried again in place first.
    #[error("publishing command ack: {0}")]
    AckNotSent(#[source] PublishError),
    /// The ack stream refused it or did not store it; tried again in place first.
    #[error("command ack not stored: {0}")]
    AckNotStored(#[source] PublishError),
    /// No publish ack within the ack timeout; tried again in place first.
    #[error("command ack: no publish ack in time")]
    AckTimedOut,
    /// The server ended the live subscription.
    #[error("command subscription ended")]
    LiveEnded,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_keep_the_wording_the_log_had() {
        let e = CommandsError::from(sqlx::Error::PoolTimedOut);
        assert_eq!(e.to_string(), format!("SQLite: {}", sqlx::Error::PoolTimedOut));
        assert_eq!(CommandsError::AckTimedOut.to_string(), "command ack: no publish ack in time");
    }
}
