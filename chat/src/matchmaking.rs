//! What the hub asks of a matchmaking queue shared by the nodes of a cluster (`--redis`).
//!
//! On one node the hub pairs its own queue. In cluster mode every stranger waits in one queue
//! in Redis instead, so two strangers on different nodes meet: a member who asks is either
//! paired at once with the first fitting stranger waiting (on any node), or queued. A node
//! whose member was taken from the queue by another node learns it from its inbox
//! ([`Matchmaker::matched`]).

/// A member looking for a stranger.
#[derive(Debug, Clone)]
pub struct Seeker {
    pub id: u64,
    pub nick: String,
    /// The cluster-wide key (`NODE:ID`) of its last partner: the two are not matched again
    /// at once.
    pub last_peer: Option<String>,
    /// The pair room to make if a partner is found now.
    pub room: String,
}

/// The partner found for a [`Seeker`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Cluster-wide key (`NODE:ID`).
    pub key: String,
    pub nick: String,
    /// Its id, when it is a member of this node.
    pub local: Option<u64>,
}

/// What came of a seek.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sought {
    /// Paired in the seeker's room.
    Paired(Peer),
    /// Nobody fitting waits: queued, at this position (1 = next).
    Queued(usize),
}

/// A pair made by another node for a member of this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    /// This node's member.
    pub id: u64,
    pub room: String,
    pub peer_key: String,
    pub peer_nick: String,
}

/// A queue of strangers shared by the nodes.
pub trait Matchmaker {
    /// Pair `who` with the first fitting stranger waiting, or queue it. Err: the queue is out
    /// of reach (nothing was queued).
    fn seek(&mut self, who: &Seeker) -> Result<Sought, String>;
    /// Where member `id` waits (1 = next), if it does.
    fn position(&mut self, id: u64) -> Option<usize>;
    /// Pairs other nodes made for this node's members since the last call.
    fn matched(&mut self) -> Vec<Matched>;
    /// Member `id`'s cluster-wide key.
    fn key(&self, id: u64) -> String;
    /// Put every member this node has waiting back in the shared queue (after the other
    /// nodes took this one for dead and removed them).
    fn requeue_all(&mut self);
}
