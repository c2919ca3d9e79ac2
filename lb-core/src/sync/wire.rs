//! The sync datagram: header, flow records, HMAC-SHA256 tag, and the replay
//! check. Pure: bytes in, bytes or a rejection out.
//!
//! ```text
//! 0      4   5    6      8         16    24       32
//! | LBSY | 2 | kind | count | boot_id | seq | sent_ms | count × 32-byte record | HMAC-SHA256 (32) |
//! ```
//! Integers are big-endian. The tag covers the sender's IPv4 address (the
//! UDP source the receiver sees, not sent in the datagram) followed by
//! everything before the tag: every node holds the same key, so without the
//! address one peer's message could be passed off as another's, or a node's
//! own sent back to it. Version 1 signed the datagram alone. A record:
//! `proto, flags, client_mac[6], client ip[4] port[2], vip ip[4] port[2],
//! backend ip[4] port[2], snat ip[4] port[2]`.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddrV4},
};

use ring::hmac;

const MAGIC: &[u8; 4] = b"LBSY";
const VERSION: u8 = 2;
const HEADER: usize = 32;
const TAG: usize = 32;
pub const RECORD: usize = 32;
/// Largest datagram sent or accepted: fits a 1500-byte MTU with the IPv4
/// and UDP headers, so a message is never fragmented.
pub const MAX_MESSAGE: usize = 1400;
/// Flow records per message.
pub const RECORDS_PER_MESSAGE: usize = (MAX_MESSAGE - HEADER - TAG) / RECORD;
/// A message whose timestamp is further than this from the receiver's clock
/// is refused: it bounds a replay to a receiver that has just restarted and
/// so knows no sequence number yet. Nodes of a pair are NTP-synced anyway.
pub const MAX_CLOCK_SKEW_MS: u64 = 30_000;

const KIND_HELLO: u8 = 1;
const KIND_FLOWS: u8 = 2;
/// `FlowRecord::closing` on the wire.
const FLAG_CLOSING: u8 = 1;

/// One nat connection, without anything node-local: the receiver rebuilds
/// both connection-table entries from it with its own MACs and interfaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowRecord {
    pub proto: u8,
    /// A FIN or RST was seen: the receiver expires it like a closing flow.
    pub closing: bool,
    /// The client side's next hop (the client's L2 source as the master saw
    /// it). All VRRP nodes share the VIP's segment, so it is theirs too.
    pub client_mac: [u8; 6],
    pub client: SocketAddrV4,
    pub vip: SocketAddrV4,
    pub backend: SocketAddrV4,
    /// The SNAT address and port the backend sees as its peer.
    pub snat: SocketAddrV4,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// "I am here, with this boot id": a master resends its whole table to a
    /// peer whose boot id changed.
    Hello,
    Flows(Vec<FlowRecord>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The sender's start time (Unix ns): a new value means the sender
    /// restarted (with an empty table).
    pub boot_id: u64,
    /// Strictly increasing within a boot.
    pub seq: u64,
    /// Sender's wall clock, Unix ms.
    pub sent_ms: u64,
    pub body: Body,
}

/// Why a datagram was refused; each is a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
pub enum Reject {
    #[error("not from a configured peer")]
    UnknownPeer,
    #[error("larger than {MAX_MESSAGE} bytes")]
    Oversized,
    #[error("shorter than its header and tag, or than its record count says")]
    Truncated,
    #[error("not an lb sync message (magic or version)")]
    BadMagic,
    #[error("authentication failed (wrong key or altered)")]
    BadTag,
    #[error("unknown message kind")]
    BadKind,
    #[error("replayed (old boot id or sequence number, or our own message sent back)")]
    Replayed,
    #[error("timestamp more than {MAX_CLOCK_SKEW_MS} ms from our clock")]
    Stale,
}

impl Reject {
    pub const ALL: [Reject; 8] = [
        Reject::UnknownPeer,
        Reject::Oversized,
        Reject::Truncated,
        Reject::BadMagic,
        Reject::BadTag,
        Reject::BadKind,
        Reject::Replayed,
        Reject::Stale,
    ];

    /// Metric label.
    pub fn name(self) -> &'static str {
        match self {
            Reject::UnknownPeer => "unknown_peer",
            Reject::Oversized => "oversized",
            Reject::Truncated => "truncated",
            Reject::BadMagic => "bad_magic",
            Reject::BadTag => "bad_tag",
            Reject::BadKind => "bad_kind",
            Reject::Replayed => "replayed",
            Reject::Stale => "stale",
        }
    }
}

/// The shared key, as HMAC-SHA256 uses it.
#[derive(Clone)]
pub struct Key(hmac::Key);

/// Shortest key accepted: 128 bits.
pub const MIN_KEY_LEN: usize = 16;

impl Key {
    /// `None` when shorter than [`MIN_KEY_LEN`].
    pub fn new(secret: &[u8]) -> Option<Key> {
        (secret.len() >= MIN_KEY_LEN).then(|| Key(hmac::Key::new(hmac::HMAC_SHA256, secret)))
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

fn put_addr(out: &mut Vec<u8>, a: SocketAddrV4) {
    out.extend_from_slice(&a.ip().octets());
    out.extend_from_slice(&a.port().to_be_bytes());
}

fn get_addr(b: &[u8]) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::new(b[0], b[1], b[2], b[3]),
        u16::from_be_bytes([b[4], b[5]]),
    )
}

/// Encodes and signs a message. Panics if it holds more than
/// [`RECORDS_PER_MESSAGE`] records: callers chunk them (a bug otherwise).
pub fn seal(key: &Key, sender: Ipv4Addr, m: &Message) -> Vec<u8> {
    let (kind, records): (u8, &[FlowRecord]) = match &m.body {
        Body::Hello => (KIND_HELLO, &[]),
        Body::Flows(r) => (KIND_FLOWS, r),
    };
    assert!(records.len() <= RECORDS_PER_MESSAGE, "too many records");
    let mut out = Vec::with_capacity(HEADER + records.len() * RECORD + TAG);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(kind);
    out.extend_from_slice(&(records.len() as u16).to_be_bytes());
    out.extend_from_slice(&m.boot_id.to_be_bytes());
    out.extend_from_slice(&m.seq.to_be_bytes());
    out.extend_from_slice(&m.sent_ms.to_be_bytes());
    for r in records {
        out.push(r.proto);
        out.push(if r.closing { FLAG_CLOSING } else { 0 });
        out.extend_from_slice(&r.client_mac);
        for a in [r.client, r.vip, r.backend, r.snat] {
            put_addr(&mut out, a);
        }
    }
    let tag = hmac::sign(&key.0, &signed_by(sender, &out));
    out.extend_from_slice(tag.as_ref());
    out
}

/// What the tag is computed over: the sender's address, then the datagram
/// up to the tag.
fn signed_by(sender: Ipv4Addr, bytes: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + bytes.len());
    v.extend_from_slice(&sender.octets());
    v.extend_from_slice(bytes);
    v
}

/// Checks the size, the framing and the tag (in constant time) for a
/// datagram received from `sender`, then decodes. Replay is checked
/// separately ([`Replay`]), only on messages that authenticated, so forged
/// datagrams cannot move its state.
pub fn open(key: &Key, sender: Ipv4Addr, datagram: &[u8]) -> Result<Message, Reject> {
    if datagram.len() > MAX_MESSAGE {
        return Err(Reject::Oversized);
    }
    if datagram.len() < HEADER + TAG {
        return Err(Reject::Truncated);
    }
    if &datagram[..4] != MAGIC || datagram[4] != VERSION {
        return Err(Reject::BadMagic);
    }
    let (signed, tag) = datagram.split_at(datagram.len() - TAG);
    hmac::verify(&key.0, &signed_by(sender, signed), tag).map_err(|_| Reject::BadTag)?;
    let count = u16::from_be_bytes([signed[6], signed[7]]) as usize;
    if signed.len() != HEADER + count * RECORD {
        return Err(Reject::Truncated);
    }
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&signed[i..i + 8]);
        u64::from_be_bytes(b)
    };
    let body = match signed[5] {
        KIND_HELLO if count == 0 => Body::Hello,
        KIND_FLOWS => Body::Flows(
            signed[HEADER..]
                .chunks_exact(RECORD)
                .map(|r| FlowRecord {
                    proto: r[0],
                    closing: r[1] & FLAG_CLOSING != 0,
                    client_mac: [r[2], r[3], r[4], r[5], r[6], r[7]],
                    client: get_addr(&r[8..14]),
                    vip: get_addr(&r[14..20]),
                    backend: get_addr(&r[20..26]),
                    snat: get_addr(&r[26..32]),
                })
                .collect(),
        ),
        _ => return Err(Reject::BadKind),
    };
    Ok(Message {
        boot_id: u64_at(8),
        seq: u64_at(16),
        sent_ms: u64_at(24),
        body,
    })
}

/// What a receiver remembers of one peer to refuse replays: the last
/// message accepted (boot id, sequence number, timestamp).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Replay {
    last: Option<(u64, u64, u64)>,
}

impl Replay {
    /// Accepts a message within [`MAX_CLOCK_SKEW_MS`] of `now_ms` that is
    /// newer than the last one accepted, and remembers it. Newer means a
    /// higher sequence number in the same boot; across boots, a later
    /// timestamp: every message of an earlier run of the sender was sent
    /// before the last one accepted, and a sender whose clock was stepped
    /// back across its restart is heard again once its clock passes that
    /// point, not refused until the receiver restarts.
    pub fn check(&mut self, m: &Message, now_ms: u64) -> Result<(), Reject> {
        if m.sent_ms.abs_diff(now_ms) > MAX_CLOCK_SKEW_MS {
            return Err(Reject::Stale);
        }
        if let Some((boot, seq, sent_ms)) = self.last {
            let newer = if m.boot_id == boot {
                m.seq > seq
            } else {
                m.sent_ms > sent_ms
            };
            if !newer {
                return Err(Reject::Replayed);
            }
        }
        self.last = Some((m.boot_id, m.seq, m.sent_ms));
        Ok(())
    }

    /// The peer's boot id, once a message of it was accepted.
    pub fn boot_id(&self) -> Option<u64> {
        self.last.map(|(b, _, _)| b)
    }
}

/// The receiving end: only configured peers, only authenticated, only new
/// messages, never our own.
#[derive(Debug)]
pub struct Gate {
    key: Key,
    peers: HashMap<Ipv4Addr, Replay>,
    own_boot_id: u64,
}

impl Gate {
    /// `own_boot_id` is the one this node sends with: if `peers` names this
    /// node's own address, its own messages come in from a listed address
    /// with a valid tag, and their later timestamps would pass the replay
    /// check.
    pub fn new(key: Key, peers: &[Ipv4Addr], own_boot_id: u64) -> Gate {
        Gate {
            key,
            peers: peers.iter().map(|p| (*p, Replay::default())).collect(),
            own_boot_id,
        }
    }

    pub fn accept(
        &mut self,
        from: Ipv4Addr,
        datagram: &[u8],
        now_ms: u64,
    ) -> Result<Message, Reject> {
        let replay = self.peers.get_mut(&from).ok_or(Reject::UnknownPeer)?;
        let m = open(&self.key, from, datagram)?;
        if m.boot_id == self.own_boot_id {
            return Err(Reject::Replayed);
        }
        replay.check(&m, now_ms)?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        Key::new(b"0123456789abcdef0123456789abcdef").expect("key")
    }

    fn record(i: u16) -> FlowRecord {
        FlowRecord {
            proto: 6,
            closing: i % 2 == 1,
            client_mac: [2, 0, 0, 0, 0, i as u8],
            client: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 40_000 + i),
            vip: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 100), 80),
            backend: SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 1), 8033),
            snat: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 100), 1024 + i),
        }
    }

    /// The sender of the tests' messages.
    const A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

    fn flows(n: u16, seq: u64) -> Message {
        Message {
            boot_id: 7,
            seq,
            sent_ms: 1_000_000,
            body: Body::Flows((0..n).map(record).collect()),
        }
    }

    #[test]
    fn a_full_message_round_trips_and_fits_the_mtu() {
        let m = flows(RECORDS_PER_MESSAGE as u16, 1);
        let bytes = seal(&key(), A, &m);
        assert!(bytes.len() <= MAX_MESSAGE, "{} bytes", bytes.len());
        assert_eq!(open(&key(), A, &bytes), Ok(m));
        let hello = Message {
            boot_id: 1,
            seq: 2,
            sent_ms: 3,
            body: Body::Hello,
        };
        assert_eq!(open(&key(), A, &seal(&key(), A, &hello)), Ok(hello));
    }

    #[test]
    fn any_flipped_bit_fails_authentication() {
        let bytes = seal(&key(), A, &flows(3, 1));
        // Magic and version are checked before the tag; every other byte,
        // the tag included, is covered by it.
        for i in 5..bytes.len() {
            let mut t = bytes.clone();
            t[i] ^= 0x10;
            assert_eq!(open(&key(), A, &t), Err(Reject::BadTag), "byte {i}");
        }
        let mut t = bytes.clone();
        t[0] ^= 1;
        assert_eq!(open(&key(), A, &t), Err(Reject::BadMagic));
    }

    #[test]
    fn a_wrong_key_is_refused() {
        let other = Key::new(b"another key of 32 bytes, really!").expect("key");
        let bytes = seal(&other, A, &flows(2, 1));
        assert_eq!(open(&key(), A, &bytes), Err(Reject::BadTag));
        assert!(Key::new(b"short").is_none());
    }

    #[test]
    fn truncated_and_oversized_datagrams_are_refused() {
        let bytes = seal(&key(), A, &flows(3, 1));
        assert_eq!(open(&key(), A, &bytes[..HEADER]), Err(Reject::Truncated));
        assert_eq!(open(&key(), A, &[]), Err(Reject::Truncated));
        // Cut a record off but keep a valid tag over what is left: the
        // count no longer matches.
        let mut short = bytes[..bytes.len() - TAG - RECORD].to_vec();
        let tag = hmac::sign(&key().0, &signed_by(A, &short));
        short.extend_from_slice(tag.as_ref());
        assert_eq!(open(&key(), A, &short), Err(Reject::Truncated));
        let mut big = bytes.clone();
        big.resize(MAX_MESSAGE + 1, 0);
        assert_eq!(open(&key(), A, &big), Err(Reject::Oversized));
    }

    #[test]
    fn an_unknown_kind_is_refused_even_when_signed() {
        let mut b = seal(&key(), A, &flows(0, 1));
        b.truncate(b.len() - TAG);
        b[5] = 9;
        let tag = hmac::sign(&key().0, &signed_by(A, &b));
        b.extend_from_slice(tag.as_ref());
        assert_eq!(open(&key(), A, &b), Err(Reject::BadKind));
    }

    #[test]
    fn replays_and_stale_messages_are_refused() {
        let now = 1_000_000;
        let mut r = Replay::default();
        let m = |boot, seq, sent_ms| Message {
            boot_id: boot,
            seq,
            sent_ms,
            body: Body::Hello,
        };
        assert_eq!(r.check(&m(5, 1, now), now), Ok(()));
        assert_eq!(r.check(&m(5, 1, now), now), Err(Reject::Replayed));
        assert_eq!(r.check(&m(5, 3, now), now), Ok(()));
        assert_eq!(r.check(&m(5, 2, now), now), Err(Reject::Replayed));
        // A restarted sender starts its sequence again under a new boot.
        assert_eq!(r.check(&m(6, 1, now + 5), now), Ok(()));
        assert_eq!(r.boot_id(), Some(6));
        // Anything of the earlier run was sent before that.
        assert_eq!(r.check(&m(5, 9, now), now), Err(Reject::Replayed));
        assert_eq!(r.check(&m(5, 4, now + 4), now), Err(Reject::Replayed));
        let late = now + MAX_CLOCK_SKEW_MS + 6;
        assert_eq!(r.check(&m(6, 2, now + 5), late), Err(Reject::Stale));
        // A refused message does not advance the state.
        assert_eq!(r.check(&m(6, 2, now + 5), now), Ok(()));
        // A sender restarted with its clock stepped back (smaller boot id)
        // is heard once its clock passes the last message accepted.
        assert_eq!(r.check(&m(3, 1, now + 2), now), Err(Reject::Replayed));
        assert_eq!(r.check(&m(3, 2, now + 6), now), Ok(()));
        assert_eq!(r.boot_id(), Some(3));
    }

    #[test]
    fn the_gate_takes_only_configured_peers_and_each_message_once() {
        let peer = Ipv4Addr::new(198, 18, 0, 3);
        let mut g = Gate::new(key(), &[peer], 99);
        let bytes = seal(&key(), peer, &flows(1, 1));
        let now = 1_000_000;
        assert_eq!(
            g.accept(Ipv4Addr::new(198, 18, 0, 9), &bytes, now),
            Err(Reject::UnknownPeer)
        );
        assert!(g.accept(peer, &bytes, now).is_ok());
        assert_eq!(g.accept(peer, &bytes, now), Err(Reject::Replayed));
        let mut forged = bytes.clone();
        forged[20] ^= 1;
        assert_eq!(g.accept(peer, &forged, now), Err(Reject::BadTag));
    }

    #[test]
    fn a_message_is_bound_to_its_senders_address() {
        // Node A with peers B and C, all holding the same key.
        let (b, c) = (Ipv4Addr::new(198, 18, 0, 3), Ipv4Addr::new(198, 18, 0, 4));
        let mut at_a = Gate::new(key(), &[b, c], 100);
        let now = 1_000_000;
        let from_b = |seq| Message {
            boot_id: 200,
            seq,
            sent_ms: now,
            body: Body::Hello,
        };
        // B's message relayed with C's address as its source.
        let relayed = seal(&key(), b, &from_b(1));
        assert_eq!(at_a.accept(c, &relayed, now), Err(Reject::BadTag));
        // A's own message sent back to it from B's address.
        let mut ours = flows(1, 1);
        ours.boot_id = 100;
        assert_eq!(
            at_a.accept(b, &seal(&key(), A, &ours), now),
            Err(Reject::BadTag)
        );
        // Neither moved any state: B's own message is taken.
        assert!(at_a.accept(b, &relayed, now).is_ok());
        assert_eq!(at_a.peers[&b].boot_id(), Some(200));
        assert_eq!(at_a.peers[&c].boot_id(), None);
    }

    #[test]
    fn our_own_messages_are_refused_even_from_a_listed_address() {
        // The same peer list on both nodes lists A itself: its own messages
        // reach it from a configured address, with a valid tag.
        let mut at_a = Gate::new(key(), &[A], 100);
        let mut ours = flows(1, 1);
        ours.boot_id = 100;
        assert_eq!(
            at_a.accept(A, &seal(&key(), A, &ours), 1_000_000),
            Err(Reject::Replayed)
        );
    }
}
