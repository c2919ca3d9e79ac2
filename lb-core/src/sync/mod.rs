//! Connection-state sync between the nodes of a VRRP pair, so established
//! flows survive a failover in every forwarding mode.
//!
//! # What needs state
//!
//! * `dr` and `tun` need none. A packet of an established flow that reaches
//!   a node without an entry for it is scheduled by Maglev, and both nodes
//!   build byte-identical tables from the same live backend set: members are
//!   sorted and hashed by address, never by the node-local backend id
//!   (`table::maglev`, tested there), the flow hash is the same code on
//!   both, and the tun outer source comes from that hash too. So the new
//!   master sends each flow to the backend the old one did. What breaks it:
//!   a different live set on the two nodes (a health check failing on one
//!   node only; Maglev's minimal disruption then moves only the flows of
//!   the slots that changed) and `persistence_timeout` (templates are not
//!   synced, so a client's later connections may be rescheduled).
//! * `nat` needs state: the backend knows the connection as
//!   (SNAT address, SNAT port) ↔ backend, and the SNAT port was allocated by
//!   the old master. A node that rescheduled the flow would pick another
//!   port and the backend would answer with a reset.
//!
//! # Design
//!
//! In the spirit of the LVS sync daemon and conntrackd, over UDP between
//! configured peers (`[sync]`):
//!
//! * **Sender: the VRRP master only** (of `sync.vrrp_instance`). Every
//!   `sync.interval` it scans the connection table (`FLOWS`) and sends the
//!   live nat flows that are new, have started closing, or saw traffic and
//!   were last sent more than a minute ago (at most half the idle timeout),
//!   so the peer's copy never idles out first. A scan sends at most
//!   [`MAX_FLOWS_PER_SCAN`] flows; the rest go at the next one. A scan of
//!   the table was chosen over a datapath queue of new flows: it needs no
//!   change to the hot path, sees closes and refreshes with no extra
//!   events, and its cost (a map walk per interval) is bounded by the
//!   table's capacity.
//! * **Records are logical** ([`wire::FlowRecord`], 32 bytes): client
//!   address and port, VIP, backend, SNAT address and port, protocol,
//!   closing flag, and the client side's next-hop MAC. That MAC is shared by
//!   the pair (VRRP needs both nodes on the VIP's segment). Everything else
//!   that is node-local — VIP and backend ids, the backend's next-hop MAC,
//!   our MACs, interface indexes, the last-seen clock — the receiver takes
//!   from its own state ([`flows::rebuild`]): it writes the forward entry
//!   (client → backend via SNAT) and the reply entry (which also claims the
//!   SNAT port, so its own allocator will not hand it out) stamped with its
//!   own clock. A record it cannot honour (no such service or backend here,
//!   another SNAT address, a backend that is this node) is skipped and
//!   counted.
//! * **Every node accepts** flows from its configured peers whatever its
//!   state, and every node sends a hello (no records) each interval: a
//!   master that sees a peer's boot id change (it restarted, empty table)
//!   resends its whole table. A node that becomes master resends too.
//! * **Authentication**: HMAC-SHA256 (ring, already in the tree through
//!   rustls) over the sender's address and the whole datagram with a shared
//!   key read from `sync.key_file`, which must not be accessible to
//!   "other"; the address under the tag keeps one node's messages from
//!   being passed off as another's, or sent back to it. **Replay**:
//!   each message carries the sender's boot id (its start time), a sequence
//!   number strictly increasing within the boot and a timestamp; a receiver
//!   accepts only messages newer than the last it accepted from that peer
//!   (a higher sequence number in the same boot, a later timestamp from
//!   another boot) and within [`wire::MAX_CLOCK_SKEW_MS`] of its own clock,
//!   which bounds replays to a receiver that just restarted. A message
//!   carrying the receiver's own boot id is its own, and refused (a peer
//!   list that names the node itself would let it in). Datagrams from an
//!   address that is not a configured peer are dropped before any crypto.
//! * **Bounds**: datagrams of at most [`wire::MAX_MESSAGE`] bytes (no
//!   fragmentation; larger ones are refused), [`MAX_FLOWS_PER_SCAN`] flows
//!   per scan, paced by [`PACE_EVERY`] messages, and a receive batch of at
//!   most [`MAX_BATCH`] messages per datapath write.
//!
//! # What the operator must do
//!
//! The SNAT address of every nat service must be a VRRP virtual address
//! that moves with the VIP (it may be the VIP itself): backends answer to
//! it, so it must follow the master. Validation refuses a `[sync]` config
//! where it is not, and SNAT ports that include a port of a VIP on that
//! address. Both nodes need the same services and backends.
//!
//! A SIGKILLed `lb run` takes its datapath with it unless `daemon.pin_dir`
//! pins the XDP link: its host's kernel, which keeps the VIP, would then
//! reset every flow until the other node's gratuitous ARPs. With the pin,
//! the dead daemon's datapath forwards on until the takeover, as IPVS
//! outlives keepalived.
//!
//! Flows to a backend that runs on the old master itself are not carried
//! over (they die with that node anyway), nor are flows whose backend is
//! the receiving node (its socket knows the SNAT address as the peer, which
//! has just become one of its own addresses).

pub mod counters;
pub mod flows;
pub mod keyfile;
pub mod wire;

pub use counters::Counters;

/// Flows sent per scan at most: 65536 × 32 bytes ≈ 1600 datagrams, 2 MiB.
pub const MAX_FLOWS_PER_SCAN: usize = 65_536;
/// The sender yields for a millisecond after this many datagrams, so a full
/// resend does not overrun the peer's socket buffer.
pub const PACE_EVERY: usize = 32;
/// Datagrams applied to the datapath in one write at most.
pub const MAX_BATCH: usize = 64;
