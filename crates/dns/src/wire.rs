//! The DNS wire format (RFC 1035) as far as the node's resolver needs it:
//! a query with one question is read ([`parse_query`]); an answer of A,
//! SRV and SOA records is written ([`response`]). Names are written whole
//! (no compression but for the question's name), which keeps answers of a
//! few dozen records well under the 512 bytes of plain UDP DNS.

use std::net::Ipv4Addr;

use thiserror::Error;

pub const TYPE_A: u16 = 1;
pub const TYPE_SOA: u16 = 6;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_SRV: u16 = 33;
pub const TYPE_ANY: u16 = 255;
pub const CLASS_IN: u16 = 1;

pub const RCODE_NOERROR: u8 = 0;
pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NXDOMAIN: u8 = 3;
pub const RCODE_NOTIMP: u8 = 4;

/// The longest name DNS allows, in wire bytes.
const MAX_NAME: usize = 255;

/// Why a packet is not a query the resolver reads.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    #[error("the packet is shorter than its contents say")]
    Short,
    #[error("a name in the packet is malformed")]
    Name,
    #[error("the packet is a response, not a query")]
    NotAQuery,
    #[error("opcode {0} is not a standard query")]
    Opcode(u8),
    #[error("a query has one question, this one {0}")]
    Questions(u16),
}

impl WireError {
    /// The answer's code for this error.
    pub fn rcode(&self) -> u8 {
        match self {
            WireError::Opcode(_) => RCODE_NOTIMP,
            _ => RCODE_FORMERR,
        }
    }
}

/// A query's header and its one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    /// Recursion desired: copied into the answer.
    pub recursion_desired: bool,
    /// The name asked for, lowercase, without the final dot.
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
    /// Where the question ends in the packet (header and question are
    /// copied into the answer as they came).
    pub question_end: usize,
}

/// A record of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    A {
        name: String,
        ttl: u32,
        addr: Ipv4Addr,
    },
    Srv {
        name: String,
        ttl: u32,
        priority: u16,
        weight: u16,
        port: u16,
        target: String,
    },
    /// The authority of a negative answer: its `minimum` is how long a
    /// cache keeps the "no" (RFC 2308).
    Soa {
        name: String,
        ttl: u32,
        minimum: u32,
    },
}

fn u16_at(packet: &[u8], at: usize) -> Result<u16, WireError> {
    let bytes = packet.get(at..at + 2).ok_or(WireError::Short)?;
    Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
}

/// Reads a query with exactly one question. A name with a compression
/// pointer is refused: no client compresses its one question.
pub fn parse_query(packet: &[u8]) -> Result<Query, WireError> {
    let id = u16_at(packet, 0)?;
    let flags = u16_at(packet, 2)?;
    if flags & 0x8000 != 0 {
        return Err(WireError::NotAQuery);
    }
    let opcode = ((flags >> 11) & 0xF) as u8;
    if opcode != 0 {
        return Err(WireError::Opcode(opcode));
    }
    let questions = u16_at(packet, 4)?;
    if questions != 1 {
        return Err(WireError::Questions(questions));
    }
    let mut at = 12;
    let mut labels: Vec<String> = Vec::new();
    let mut wire_len = 1;
    loop {
        let len = usize::from(*packet.get(at).ok_or(WireError::Short)?);
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return Err(WireError::Name);
        }
        wire_len += len + 1;
        if wire_len > MAX_NAME {
            return Err(WireError::Name);
        }
        let label = packet.get(at..at + len).ok_or(WireError::Short)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16_at(packet, at)?;
    let qclass = u16_at(packet, at + 2)?;
    Ok(Query {
        id,
        recursion_desired: flags & 0x0100 != 0,
        name: labels.join("."),
        qtype,
        qclass,
        question_end: at + 4,
    })
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Writes `name` as labels; a label longer than 63 bytes is cut there
/// (names come from the table, whose names are valid).
fn put_name(out: &mut Vec<u8>, name: &str) {
    for label in name.split('.').filter(|l| !l.is_empty()) {
        let bytes = &label.as_bytes()[..label.len().min(63)];
        out.push(bytes.len() as u8);
        out.extend_from_slice(bytes);
    }
    out.push(0);
}

fn put_record(out: &mut Vec<u8>, record: &Record) {
    let (name, rtype, ttl) = match record {
        Record::A { name, ttl, .. } => (name, TYPE_A, *ttl),
        Record::Srv { name, ttl, .. } => (name, TYPE_SRV, *ttl),
        Record::Soa { name, ttl, .. } => (name, TYPE_SOA, *ttl),
    };
    put_name(out, name);
    put_u16(out, rtype);
    put_u16(out, CLASS_IN);
    put_u32(out, ttl);
    let mut data = Vec::new();
    match record {
        Record::A { addr, .. } => data.extend_from_slice(&addr.octets()),
        Record::Srv {
            priority,
            weight,
            port,
            target,
            ..
        } => {
            put_u16(&mut data, *priority);
            put_u16(&mut data, *weight);
            put_u16(&mut data, *port);
            put_name(&mut data, target);
        }
        Record::Soa { minimum, .. } => {
            put_name(&mut data, "ns.flotilla");
            put_name(&mut data, "hostmaster.flotilla");
            for v in [1, 60, 60, 60, *minimum] {
                put_u32(&mut data, v);
            }
        }
    }
    put_u16(out, data.len() as u16);
    out.extend_from_slice(&data);
}

/// The answer to `query` (read from `packet`): the header with `rcode`,
/// the question as it came, then the records of each section.
pub fn response(
    query: &Query,
    packet: &[u8],
    rcode: u8,
    answers: &[Record],
    authority: &[Record],
    additional: &[Record],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    put_u16(&mut out, query.id);
    // QR, authoritative, recursion available; RD as asked.
    let mut flags: u16 = 0x8000 | 0x0400 | 0x0080 | u16::from(rcode & 0xF);
    if query.recursion_desired {
        flags |= 0x0100;
    }
    put_u16(&mut out, flags);
    put_u16(&mut out, 1);
    for section in [answers, authority, additional] {
        put_u16(&mut out, section.len() as u16);
    }
    out.extend_from_slice(packet.get(12..query.question_end).unwrap_or_default());
    for record in answers.iter().chain(authority).chain(additional) {
        put_record(&mut out, record);
    }
    out
}

/// The largest answer a UDP client takes: 512 bytes, or the payload size
/// its EDNS0 record offers (an OPT record right after the question, as
/// resolvers send it), at most 4096.
pub fn udp_limit(packet: &[u8], query: &Query) -> usize {
    let additional = u16_at(packet, 10).unwrap_or(0);
    let at = query.question_end;
    // OPT: the root name (0), type 41, then the size in the class field.
    let opt =
        additional > 0 && packet.get(at) == Some(&0) && u16_at(packet, at + 1).ok() == Some(41);
    match (opt, u16_at(packet, at + 3)) {
        (true, Ok(size)) => usize::from(size).clamp(512, 4096),
        _ => 512,
    }
}

/// [`response`] within `limit` bytes: when it does not fit, the
/// additional records go, then answers from the end, and the TC bit says
/// so (the client asks again over TCP).
pub fn response_within(
    query: &Query,
    packet: &[u8],
    rcode: u8,
    answers: &[Record],
    authority: &[Record],
    additional: &[Record],
    limit: usize,
) -> Vec<u8> {
    let full = response(query, packet, rcode, answers, authority, additional);
    if full.len() <= limit {
        return full;
    }
    let mut kept = answers.len();
    loop {
        let mut out = response(query, packet, rcode, &answers[..kept], authority, &[]);
        if out.len() <= limit || kept == 0 {
            if let Some(flags) = out.get_mut(2) {
                *flags |= 0x02;
            }
            return out;
        }
        kept -= 1;
    }
}

/// An answer to a packet that is not a query the resolver reads: its ID
/// and the error's code, no question.
pub fn refusal(packet: &[u8], rcode: u8) -> Option<Vec<u8>> {
    let id = u16_at(packet, 0).ok()?;
    let mut out = Vec::with_capacity(12);
    put_u16(&mut out, id);
    put_u16(&mut out, 0x8000 | 0x0080 | u16::from(rcode & 0xF));
    out.extend_from_slice(&[0; 8]);
    Some(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A query as a stub resolver sends it.
    pub(crate) fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut out = Vec::new();
        put_u16(&mut out, id);
        put_u16(&mut out, 0x0100);
        for v in [1, 0, 0, 0] {
            put_u16(&mut out, v);
        }
        put_name(&mut out, name);
        put_u16(&mut out, qtype);
        put_u16(&mut out, CLASS_IN);
        out
    }

    /// Reads an answer's code and its A records' addresses.
    pub(crate) fn addresses(answer: &[u8]) -> (u8, Vec<Ipv4Addr>) {
        let rcode = answer[3] & 0xF;
        let count = u16::from_be_bytes([answer[6], answer[7]]);
        let q = parse_query(&{
            let mut a = answer.to_vec();
            a[2] &= 0x7F;
            a
        })
        .expect("question");
        let mut at = q.question_end;
        let mut out = Vec::new();
        for _ in 0..count {
            while answer[at] != 0 {
                at += usize::from(answer[at]) + 1;
            }
            at += 1;
            let rtype = u16::from_be_bytes([answer[at], answer[at + 1]]);
            let len = usize::from(u16::from_be_bytes([answer[at + 8], answer[at + 9]]));
            at += 10;
            if rtype == TYPE_A {
                out.push(Ipv4Addr::new(
                    answer[at],
                    answer[at + 1],
                    answer[at + 2],
                    answer[at + 3],
                ));
            }
            at += len;
        }
        (rcode, out)
    }

    #[test]
    fn a_query_is_read_lowercase_and_answered_with_its_question() {
        let packet = query(0xBEEF, "Tasks.Web", TYPE_A);
        let q = parse_query(&packet).expect("query");
        assert_eq!(q.id, 0xBEEF);
        assert_eq!(q.name, "tasks.web");
        assert_eq!((q.qtype, q.qclass), (TYPE_A, CLASS_IN));
        assert!(q.recursion_desired);
        let records = [
            Record::A {
                name: "tasks.web".into(),
                ttl: 1,
                addr: Ipv4Addr::new(10, 0, 9, 3),
            },
            Record::A {
                name: "tasks.web".into(),
                ttl: 1,
                addr: Ipv4Addr::new(10, 0, 9, 4),
            },
        ];
        let answer = response(&q, &packet, RCODE_NOERROR, &records, &[], &[]);
        assert_eq!(&answer[..2], &[0xBE, 0xEF]);
        assert_eq!(answer[2] & 0x80, 0x80, "a response");
        assert_eq!(
            addresses(&answer),
            (
                RCODE_NOERROR,
                vec![Ipv4Addr::new(10, 0, 9, 3), Ipv4Addr::new(10, 0, 9, 4)]
            )
        );
    }

    #[test]
    fn malformed_packets_are_refused_not_panicked_on() {
        assert_eq!(parse_query(&[0; 5]), Err(WireError::Short));
        let mut answer = query(1, "web", TYPE_A);
        answer[2] |= 0x80;
        assert_eq!(parse_query(&answer), Err(WireError::NotAQuery));
        let mut update = query(1, "web", TYPE_A);
        update[2] |= 5 << 3;
        assert_eq!(parse_query(&update), Err(WireError::Opcode(5)));
        let mut two = query(1, "web", TYPE_A);
        two[5] = 2;
        assert_eq!(parse_query(&two), Err(WireError::Questions(2)));
        let mut pointer = query(1, "web", TYPE_A);
        pointer[12] = 0xC0;
        assert_eq!(parse_query(&pointer), Err(WireError::Name));
        let cut = query(1, "web", TYPE_A);
        assert_eq!(parse_query(&cut[..cut.len() - 1]), Err(WireError::Short));
        let long = format!("{}.x", "a".repeat(63)).repeat(5);
        assert_eq!(parse_query(&query(1, &long, TYPE_A)), Err(WireError::Name));
        // Any prefix of a valid query, and any byte flipped: no panic.
        let good = query(7, "tasks.web.front", TYPE_SRV);
        for n in 0..good.len() {
            let _ = parse_query(&good[..n]);
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[n] ^= 1 << bit;
                let _ = parse_query(&bad);
            }
        }
        assert_eq!(
            refusal(&good, RCODE_FORMERR).map(|r| r[3] & 0xF),
            Some(RCODE_FORMERR)
        );
    }
}
