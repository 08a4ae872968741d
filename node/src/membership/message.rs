//! Membership messages on the wire, around node records.
//!
//! Two carriers exist: the gossipsub topic (urgent news that must reach every
//! node at once: suspicions, refutations, leaves and changed records) and the
//! sync request-response protocol, which carries everything in bulk. A sync
//! request holds the sender's own record, optionally a digest of what it knows
//! (then the answer holds the records it lacks: a *pull*), and optionally
//! records it has just learned (a *push*). Every message starts with a kind
//! byte; integers are big-endian:
//!
//! ```text
//! RECORD        0x01 | node record (see record.rs)
//! SUSPECT       0x02 | subject node id [32] | subject seq u64            (exactly 41 bytes)
//! SYNC_REQUEST  0x03 | flags u8 (bit 0: PULL) | own_len u16 | own record
//!                    | count u32 | count x (node id [32] | seq u64)
//!                    | pushed u16 | pushed x (len u16 | node record)
//! SYNC_RESPONSE 0x04 | own_len u16 | own record | count u16 | count x (len u16 | node record)
//!                    | [0x01 | seq u64]   (optional: "you are down here, at this seq")
//! ```
//!
//! A request without PULL is answered with the responder's own record only.
//! The optional tail of a response tells a requester that the responder holds
//! it down at that seq: a node that others declared down while it was alive,
//! and that missed the suspicion, learns it from the next node it talks to and
//! re-signs its record, instead of staying down until its next refresh.
//!
//! On a sync stream each message is preceded by its length (u32 big-endian).
//!
//! Parsing borrows from the input and checks every length before use, so a
//! malformed message is a typed error, never a panic or a large allocation.

use super::identity::NodeId;
use super::record::MAX_RECORD_LEN;

/// Kind byte of a gossiped node record.
pub const KIND_RECORD: u8 = 0x01;
/// Kind byte of a suspicion ("I could not reach node X at seq S").
pub const KIND_SUSPECT: u8 = 0x02;
/// Kind byte of a sync request.
pub const KIND_SYNC_REQUEST: u8 = 0x03;
/// Kind byte of a sync response.
pub const KIND_SYNC_RESPONSE: u8 = 0x04;
/// Most digest entries one sync request may carry (bounds the responder's work).
pub const MAX_DIGEST_ENTRIES: usize = 16_384;
/// Most records one sync response may carry.
pub const MAX_SYNC_RECORDS: usize = 4_096;
/// Most records one sync request may push.
pub const MAX_PUSHED_RECORDS: usize = 1_024;
/// Sync request flag: answer with the records my digest lacks.
pub const FLAG_PULL: u8 = 0x01;
/// Marks the optional "requester is down here" tail of a sync response.
const TAIL_REQUESTER_DOWN: u8 = 0x01;
/// Length of one digest entry.
const DIGEST_ENTRY_LEN: usize = 40;
/// Largest valid gossip message (a record plus its kind byte).
pub const MAX_GOSSIP_LEN: usize = 1 + MAX_RECORD_LEN;
/// Largest valid sync request.
pub const MAX_SYNC_REQUEST_LEN: usize = 1
    + 1
    + 2
    + MAX_RECORD_LEN
    + 4
    + MAX_DIGEST_ENTRIES * DIGEST_ENTRY_LEN
    + 2
    + MAX_PUSHED_RECORDS * (2 + MAX_RECORD_LEN);
/// Largest valid sync response.
pub const MAX_SYNC_RESPONSE_LEN: usize =
    1 + 2 + MAX_RECORD_LEN + 2 + MAX_SYNC_RECORDS * (2 + MAX_RECORD_LEN) + 1 + 8;

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// The message is empty.
    #[error("empty membership message")]
    Empty,
    /// The kind byte is not one this carrier accepts.
    #[error("membership message kind {0:#04x} is not valid here")]
    UnknownKind(u8),
    /// A length or count runs past the end of the message.
    #[error("membership message truncated: {0}")]
    Truncated(&'static str),
    /// Bytes left over after the last field.
    #[error("membership message has {0} trailing bytes")]
    TrailingBytes(usize),
    /// An optional part of a message that this version does not define.
    #[error("membership message has an unknown optional part {0:#04x}")]
    UnknownTail(u8),
    /// Flag bits this version does not define.
    #[error("membership message has unknown flag bits {0:#04x}")]
    UnknownFlags(u8),
    /// A count or length above the protocol's limits.
    #[error("membership message field `{field}` is {value}, above the limit {max}")]
    OverLimit {
        /// The field.
        field: &'static str,
        /// Its value.
        value: usize,
        /// The limit.
        max: usize,
    },
}

/// A gossip message, borrowed from the received bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GossipMessage<'a> {
    /// An encoded node record (not yet verified).
    Record(&'a [u8]),
    /// Someone could not reach `node` while it was at `seq`; if `node` is alive it refutes.
    Suspect {
        /// The suspected node.
        node: NodeId,
        /// The record seq the suspicion is about.
        seq: u64,
    },
}

/// A sync request, borrowed from the received bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRequest<'a> {
    /// Whether the requester wants the records its digest lacks.
    pub pull: bool,
    /// The requester's own record (must be signed by the requester's identity).
    pub own_record: &'a [u8],
    digest: &'a [u8],
    /// Records the requester pushes (news it has just learned).
    pub pushed: Vec<&'a [u8]>,
}

/// A sync response, borrowed from the received bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncResponse<'a> {
    /// The responder's own record (must be signed by the responder's identity).
    pub own_record: &'a [u8],
    /// Records the requester lacked or had older versions of.
    pub records: Vec<&'a [u8]>,
    /// The seq at which the responder holds the requester down, if it does.
    pub requester_down: Option<u64>,
}

/// A bounds-checked reader over a message.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], MessageError> {
        if self.rest.len() < n {
            return Err(MessageError::Truncated(what));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, MessageError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<usize, MessageError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]) as usize)
    }
    fn u32(&mut self, what: &'static str) -> Result<usize, MessageError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, MessageError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn record(&mut self, what: &'static str) -> Result<&'a [u8], MessageError> {
        let len = self.u16(what)?;
        if len > MAX_RECORD_LEN {
            return Err(MessageError::OverLimit {
                field: what,
                value: len,
                max: MAX_RECORD_LEN,
            });
        }
        self.take(len, what)
    }
    fn finish(self) -> Result<(), MessageError> {
        match self.rest.len() {
            0 => Ok(()),
            n => Err(MessageError::TrailingBytes(n)),
        }
    }
}

fn kind<'a>(bytes: &'a [u8], expected: &[u8]) -> Result<(u8, Reader<'a>), MessageError> {
    let (&k, rest) = bytes.split_first().ok_or(MessageError::Empty)?;
    if !expected.contains(&k) {
        return Err(MessageError::UnknownKind(k));
    }
    Ok((k, Reader { rest }))
}

fn limit(field: &'static str, value: usize, max: usize) -> Result<(), MessageError> {
    if value > max {
        return Err(MessageError::OverLimit { field, value, max });
    }
    Ok(())
}

impl<'a> GossipMessage<'a> {
    /// Parses a gossip message (record bytes are returned unparsed).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, MessageError> {
        let (k, mut r) = kind(bytes, &[KIND_RECORD, KIND_SUSPECT])?;
        if k == KIND_RECORD {
            return Ok(Self::Record(r.rest));
        }
        let node = r.take(32, "suspect node id")?;
        let seq = r.u64("suspect seq")?;
        r.finish()?;
        let mut id = [0u8; 32];
        id.copy_from_slice(node);
        Ok(Self::Suspect {
            node: NodeId::from_bytes(id),
            seq,
        })
    }

    /// Encodes the message.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Self::Record(record) => {
                let mut out = Vec::with_capacity(1 + record.len());
                out.push(KIND_RECORD);
                out.extend_from_slice(record);
                out
            }
            Self::Suspect { node, seq } => {
                let mut out = Vec::with_capacity(41);
                out.push(KIND_SUSPECT);
                out.extend_from_slice(node.as_bytes());
                out.extend_from_slice(&seq.to_be_bytes());
                out
            }
        }
    }
}

impl<'a> SyncRequest<'a> {
    /// Parses a sync request.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, MessageError> {
        let (_, mut r) = kind(bytes, &[KIND_SYNC_REQUEST])?;
        let flags = r.u8("flags")?;
        if flags & !FLAG_PULL != 0 {
            return Err(MessageError::UnknownFlags(flags));
        }
        let own_record = r.record("own record")?;
        let count = r.u32("digest count")?;
        limit("digest count", count, MAX_DIGEST_ENTRIES)?;
        let digest = r.take(count * DIGEST_ENTRY_LEN, "digest entries")?;
        let pushed_count = r.u16("pushed count")?;
        limit("pushed count", pushed_count, MAX_PUSHED_RECORDS)?;
        let mut pushed = Vec::with_capacity(pushed_count);
        for _ in 0..pushed_count {
            pushed.push(r.record("pushed record")?);
        }
        r.finish()?;
        Ok(Self {
            pull: flags & FLAG_PULL != 0,
            own_record,
            digest,
            pushed,
        })
    }

    /// The requester's digest: the node ids and seqs it already holds.
    pub fn digest(&self) -> impl Iterator<Item = (NodeId, u64)> + 'a {
        self.digest.chunks_exact(DIGEST_ENTRY_LEN).map(|e| {
            let mut id = [0u8; 32];
            id.copy_from_slice(&e[..32]);
            let mut seq = [0u8; 8];
            seq.copy_from_slice(&e[32..40]);
            (NodeId::from_bytes(id), u64::from_be_bytes(seq))
        })
    }

    /// Number of digest entries.
    pub fn digest_len(&self) -> usize {
        self.digest.len() / DIGEST_ENTRY_LEN
    }

    /// Encodes a pull request (answered with what the digest lacks); the digest is cut
    /// at [`MAX_DIGEST_ENTRIES`].
    pub fn encode_pull(own_record: &[u8], digest: impl Iterator<Item = (NodeId, u64)>) -> Vec<u8> {
        Self::encode(true, own_record, digest, std::iter::empty())
    }

    /// Encodes a push of `records` (no digest, answered with the responder's record only);
    /// records beyond [`MAX_PUSHED_RECORDS`] are left out.
    pub fn encode_push<'r>(own_record: &[u8], records: impl Iterator<Item = &'r [u8]>) -> Vec<u8> {
        Self::encode(false, own_record, std::iter::empty(), records)
    }

    /// Encodes any request.
    pub fn encode<'r>(
        pull: bool,
        own_record: &[u8],
        digest: impl Iterator<Item = (NodeId, u64)>,
        pushed: impl Iterator<Item = &'r [u8]>,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 1 + 2 + own_record.len() + 4 + 2);
        out.push(KIND_SYNC_REQUEST);
        out.push(if pull { FLAG_PULL } else { 0 });
        out.extend_from_slice(&(own_record.len() as u16).to_be_bytes());
        out.extend_from_slice(own_record);
        let count_at = out.len();
        out.extend_from_slice(&[0u8; 4]);
        let mut count = 0u32;
        for (node, seq) in digest.take(MAX_DIGEST_ENTRIES) {
            out.extend_from_slice(node.as_bytes());
            out.extend_from_slice(&seq.to_be_bytes());
            count += 1;
        }
        out[count_at..count_at + 4].copy_from_slice(&count.to_be_bytes());
        encode_records(&mut out, pushed, MAX_PUSHED_RECORDS);
        out
    }
}

/// Appends `count u16 | count x (len u16 | record)`, at most `max` records.
fn encode_records<'r>(out: &mut Vec<u8>, records: impl Iterator<Item = &'r [u8]>, max: usize) {
    let count_at = out.len();
    out.extend_from_slice(&[0u8; 2]);
    let mut count = 0u16;
    for record in records.take(max) {
        out.extend_from_slice(&(record.len() as u16).to_be_bytes());
        out.extend_from_slice(record);
        count += 1;
    }
    out[count_at..count_at + 2].copy_from_slice(&count.to_be_bytes());
}

impl<'a> SyncResponse<'a> {
    /// Parses a sync response.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, MessageError> {
        let (_, mut r) = kind(bytes, &[KIND_SYNC_RESPONSE])?;
        let own_record = r.record("own record")?;
        let count = r.u16("record count")?;
        limit("record count", count, MAX_SYNC_RECORDS)?;
        let mut records = Vec::with_capacity(count);
        for _ in 0..count {
            records.push(r.record("record")?);
        }
        let requester_down = if r.rest.is_empty() {
            None
        } else {
            match r.u8("tail")? {
                TAIL_REQUESTER_DOWN => Some(r.u64("requester-down seq")?),
                other => return Err(MessageError::UnknownTail(other)),
            }
        };
        r.finish()?;
        Ok(Self {
            own_record,
            records,
            requester_down,
        })
    }

    /// Encodes a response; records beyond [`MAX_SYNC_RECORDS`] are left for a later sync.
    pub fn encode<'r>(
        own_record: &[u8],
        records: impl Iterator<Item = &'r [u8]>,
        requester_down: Option<u64>,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 2 + own_record.len() + 2 + 9);
        out.push(KIND_SYNC_RESPONSE);
        out.extend_from_slice(&(own_record.len() as u16).to_be_bytes());
        out.extend_from_slice(own_record);
        encode_records(&mut out, records, MAX_SYNC_RECORDS);
        if let Some(seq) = requester_down {
            out.push(TAIL_REQUESTER_DOWN);
            out.extend_from_slice(&seq.to_be_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suspect_has_the_documented_layout() {
        let node = NodeId::from_bytes([0xab; 32]);
        let bytes = GossipMessage::Suspect { node, seq: 0x0102 }.to_bytes();
        let mut expected = vec![0x02];
        expected.extend_from_slice(&[0xab; 32]);
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0x01, 0x02]);
        assert_eq!(bytes, expected);
        assert_eq!(
            GossipMessage::parse(&bytes),
            Ok(GossipMessage::Suspect { node, seq: 0x0102 })
        );
        assert_eq!(
            GossipMessage::parse(&bytes[..40]),
            Err(MessageError::Truncated("suspect seq"))
        );
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(
            GossipMessage::parse(&long),
            Err(MessageError::TrailingBytes(1))
        );
    }

    #[test]
    fn gossip_record_is_the_record_after_the_kind_byte() {
        assert_eq!(
            GossipMessage::parse(&[0x01, 9, 8, 7]),
            Ok(GossipMessage::Record(&[9, 8, 7]))
        );
        assert_eq!(GossipMessage::parse(&[]), Err(MessageError::Empty));
        assert_eq!(
            GossipMessage::parse(&[0x03]),
            Err(MessageError::UnknownKind(3))
        );
    }

    #[test]
    fn sync_request_reads_literal_bytes() {
        let mut bytes = vec![0x03, 0x01, 0x00, 0x02, 0xaa, 0xbb, 0, 0, 0, 1];
        bytes.extend_from_slice(&[0x11; 32]);
        bytes.extend_from_slice(&7u64.to_be_bytes());
        bytes.extend_from_slice(&[0, 1, 0, 2, 0xcc, 0xdd]);
        let req = SyncRequest::parse(&bytes).unwrap();
        assert!(req.pull);
        assert_eq!(req.own_record, &[0xaa, 0xbb]);
        assert_eq!(
            req.digest().collect::<Vec<_>>(),
            vec![(NodeId::from_bytes([0x11; 32]), 7)]
        );
        assert_eq!(req.pushed, vec![&[0xcc, 0xdd][..]]);
        assert_eq!(
            SyncRequest::encode(
                true,
                &[0xaa, 0xbb],
                req.digest(),
                req.pushed.iter().copied()
            ),
            bytes,
            "encode is the inverse of parse"
        );
        let push = SyncRequest::encode_push(&[0xaa], [&[0xee][..]].into_iter());
        assert_eq!(
            push,
            vec![0x03, 0x00, 0, 1, 0xaa, 0, 0, 0, 0, 0, 1, 0, 1, 0xee]
        );
        let push = SyncRequest::parse(&push).unwrap();
        assert!(!push.pull);
        assert_eq!(push.digest_len(), 0);
    }

    #[test]
    fn sync_request_counts_are_bounded_before_allocation() {
        let mut bytes = vec![0x03, 0x01, 0x00, 0x00];
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            SyncRequest::parse(&bytes),
            Err(MessageError::OverLimit {
                field: "digest count",
                ..
            })
        ));
        let mut bytes = vec![0x03, 0x01, 0xff, 0xff];
        bytes.extend_from_slice(&[0; 8]);
        assert!(matches!(
            SyncRequest::parse(&bytes),
            Err(MessageError::OverLimit { .. })
        ));
        let mut bytes = vec![0x03, 0x00, 0x00, 0x00, 0, 0, 0, 0];
        bytes.extend_from_slice(&u16::MAX.to_be_bytes());
        assert!(matches!(
            SyncRequest::parse(&bytes),
            Err(MessageError::OverLimit {
                field: "pushed count",
                ..
            })
        ));
        assert_eq!(
            SyncRequest::parse(&[0x03, 0x80, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(MessageError::UnknownFlags(0x80))
        );
    }

    #[test]
    fn sync_response_round_trips() {
        let records: Vec<&[u8]> = vec![&[1, 2, 3], &[4]];
        let bytes = SyncResponse::encode(&[9], records.iter().copied(), None);
        assert_eq!(
            bytes,
            vec![0x04, 0, 1, 9, 0, 2, 0, 3, 1, 2, 3, 0, 1, 4],
            "layout"
        );
        let resp = SyncResponse::parse(&bytes).unwrap();
        assert_eq!(resp.own_record, &[9]);
        assert_eq!(resp.records, records);
        assert_eq!(resp.requester_down, None);
        assert_eq!(
            SyncResponse::parse(&bytes[..bytes.len() - 1]),
            Err(MessageError::Truncated("record"))
        );
        let mut many = vec![0x04, 0, 0];
        many.extend_from_slice(&u16::MAX.to_be_bytes());
        assert!(matches!(
            SyncResponse::parse(&many),
            Err(MessageError::OverLimit { .. })
        ));
    }

    #[test]
    fn sync_response_may_say_the_requester_is_down() {
        let bytes = SyncResponse::encode(&[9], std::iter::empty(), Some(0x0102));
        assert_eq!(
            bytes,
            vec![0x04, 0, 1, 9, 0, 0, 0x01, 0, 0, 0, 0, 0, 0, 0x01, 0x02],
            "layout"
        );
        let resp = SyncResponse::parse(&bytes).unwrap();
        assert_eq!(resp.requester_down, Some(0x0102));
        assert_eq!(
            SyncResponse::parse(&bytes[..bytes.len() - 1]),
            Err(MessageError::Truncated("requester-down seq"))
        );
        let mut unknown = bytes.clone();
        unknown[6] = 0x02;
        assert_eq!(
            SyncResponse::parse(&unknown),
            Err(MessageError::UnknownTail(0x02))
        );
        let mut long = bytes;
        long.push(0);
        assert_eq!(
            SyncResponse::parse(&long),
            Err(MessageError::TrailingBytes(1))
        );
    }
}
