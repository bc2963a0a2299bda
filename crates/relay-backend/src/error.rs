//! The relay's one error type.

/// What can go wrong driving the relay. Listener failures are not errors of a sync: they
/// are counted and reported in [`crate::Stats`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The runtime could not start.
    #[error("cannot start the localhost NodePort relay: {0}")]
    Runtime(#[source] std::io::Error),
    /// The runtime has stopped (its thread panicked).
    #[error("the localhost NodePort relay has stopped")]
    Stopped,
}
