//! Wire and disk types shared by every agentmesh crate.
//!
//! Nothing here touches sockets, clocks or threads: callers pass time in and
//! get bytes out. Every decoder takes a size limit so that a peer cannot make
//! a node allocate more than it agreed to accept.

pub mod channel;
pub mod codec;
pub mod consensus_wire;
pub mod crdt;
pub mod envelope;
pub mod frame;
pub mod ids;
pub mod keys;
pub mod membership;
pub mod model_wire;
pub mod pattern;
pub mod pattern_wire;
pub mod vertex;

pub use channel::{Channel, ChannelError, ChannelPattern};
pub use codec::{decode, encode, CodecError};
pub use envelope::{Envelope, EnvelopeError, MessageId};
pub use frame::{decode_frame, encode_frame, FrameError};
pub use ids::{sha256, NodeId};
pub use keys::{KeyError, NodeKey};
pub use pattern::{Pattern, PatternError};
pub use vertex::{Transaction, Vertex, VertexError, VertexId, WireVertex};
