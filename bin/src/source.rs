//! Where the daemon's objects come from: the Kubernetes API (`cluster`) or a directory of
//! manifests (`manifest_watch`). Both run on their own thread and send the sync loop the
//! same [`Update`]s, so the loop does not know which one it is fed by.

use proxy_core::Event;
use proxy_core::manifest::Object;

/// What a source tells the sync loop.
pub enum Update {
    /// A change for the engine.
    Event(Event),
    /// This node's Node or a ServiceCIDR changed; these are the context objects now (the
    /// Node, if any, and every ServiceCIDR).
    Context(Vec<Object>),
    /// Services, EndpointSlices and this node's Node have been read once.
    Listed,
}
