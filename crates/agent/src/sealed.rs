//! The encrypted overlay (`--opt encrypted`): the frames of a network
//! between nodes, sealed with AES-256-GCM in UDP datagrams.
//!
//! This kernel has no ESP and no AES-GCM for XFRM, and no WireGuard
//! (ARCHITECTURE.md), so the encryption is done here: on each node an
//! encrypted network's bridge holds a TAP device ([`tap_name`]) where a
//! plain network's holds its VXLAN device, and [`Tunnel`] carries what the
//! bridge sends into it to the other nodes of the network, and back.
//!
//! - **Wire format**, one frame per datagram to UDP [`SEALED_PORT`]: the
//!   network's VNI (4 bytes, big endian), a 12-byte nonce, then the
//!   frame as the TAP device gives it ([`VNET_HDR`] bytes of offload
//!   header, then Ethernet; a TCP burst of up to [`GSO_MAX_SEGS`]
//!   segments is one frame) sealed with the network's key (its 16-byte
//!   tag last).
//!   The VNI is authenticated (additional data) with the frame: a datagram
//!   moved to another network, or changed in any byte, is dropped.
//! - **Nonces** are this process's random 4 bytes and a 64-bit counter,
//!   never repeated under one key while the process runs, and a restarted
//!   process draws a new prefix (a repeat needs the same 32 random bits
//!   and counter value under the same key).
//! - **Keys** are 32 random bytes per network, drawn by the leader when it
//!   allocates the network and sent to the nodes of the network in the
//!   network table over the cluster's mutual TLS.
//! - **Where a frame goes** ([`destinations`]): a task's MAC is made from
//!   its address (`02:42:` and the four bytes, as the engine makes a
//!   container's), so a unicast frame goes to the node of the task with
//!   that address, from the table, without learning; broadcast, multicast
//!   and unknown destinations go to every other node of the network.
//! - **Replays** are dropped: per peer and nonce prefix, the newest
//!   counter and a window of the [`REPLAY_WINDOW`] before it
//!   ([`Replay`]); a datagram counted already, or older than the window,
//!   is not written to the network.
//! - Not done: rekeying.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use thiserror::Error;

/// The UDP port of sealed frames.
pub const SEALED_PORT: u16 = 4790;

/// Bytes a sealed frame adds to the Ethernet frame it carries.
pub const OVERHEAD: usize = 4 + 12 + 16;

/// The MTU of a task's interface on an encrypted network: a 1500-byte
/// underlay less the outer IP and UDP headers (28), the seal's
/// [`OVERHEAD`] (32) and the carried Ethernet header (14).
pub const SEALED_MTU: u32 = 1500 - 28 - OVERHEAD as u32 - 14;

/// A fresh network key: 32 random bytes, in hex.
pub fn random_key() -> String {
    rand::random::<[u8; 32]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The TAP device of encrypted network `vni`.
pub fn tap_name(vni: u32) -> String {
    format!("flvt{vni}")
}

/// Why a datagram was not opened.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SealError {
    #[error("datagram too short ({0} bytes)")]
    Short(usize),
    #[error("no key for network {0}")]
    UnknownNetwork(u32),
    #[error("datagram of network {0} failed authentication")]
    Forged(u32),
    #[error("a network key must be 32 bytes")]
    BadKey,
}

/// A network's key.
pub struct Key(LessSafeKey);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    pub fn new(bytes: &[u8]) -> Result<Key, SealError> {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| SealError::BadKey)?;
        Ok(Key(LessSafeKey::new(unbound)))
    }

    /// From the hex text the table carries.
    pub fn from_hex(text: &str) -> Result<Key, SealError> {
        if text.len() != 64 {
            return Err(SealError::BadKey);
        }
        let bytes: Result<Vec<u8>, _> = (0..32)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
            .collect();
        Key::new(&bytes.map_err(|_| SealError::BadKey)?)
    }
}

/// Nonces for one process: a random prefix and a counter.
#[derive(Debug)]
pub struct Nonces {
    prefix: [u8; 4],
    next: std::sync::atomic::AtomicU64,
}

impl Nonces {
    pub fn new(prefix: [u8; 4]) -> Nonces {
        Nonces {
            prefix,
            next: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn next(&self) -> [u8; 12] {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut out = [0u8; 12];
        out[..4].copy_from_slice(&self.prefix);
        out[4..].copy_from_slice(&n.to_be_bytes());
        out
    }
}

/// Seals `frame` of network `vni` into `out` (cleared first).
pub fn seal(key: &Key, nonces: &Nonces, vni: u32, frame: &[u8], out: &mut Vec<u8>) {
    let nonce = nonces.next();
    out.clear();
    out.extend_from_slice(&vni.to_be_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(frame);
    let header = vni.to_be_bytes();
    let (_, body) = out.split_at_mut(16);
    // Sealing only fails for a message longer than the cipher allows
    // (about 64 GB); a frame is at most 64 KiB.
    if let Ok(tag) = key.0.seal_in_place_separate_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(header),
        body,
    ) {
        out.extend_from_slice(tag.as_ref());
    }
}

/// The VNI a datagram says it belongs to.
pub fn vni_of(datagram: &[u8]) -> Result<u32, SealError> {
    let header: [u8; 4] = datagram
        .get(..4)
        .and_then(|h| h.try_into().ok())
        .ok_or(SealError::Short(datagram.len()))?;
    Ok(u32::from_be_bytes(header))
}

/// Opens a datagram in place with `key`; returns the frame it carries.
pub fn open<'a>(key: &Key, datagram: &'a mut [u8]) -> Result<&'a [u8], SealError> {
    if datagram.len() < OVERHEAD {
        return Err(SealError::Short(datagram.len()));
    }
    let vni = vni_of(datagram)?;
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&datagram[4..16]);
    let body = &mut datagram[16..];
    let frame = key
        .0
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(vni.to_be_bytes()),
            body,
        )
        .map_err(|_| SealError::Forged(vni))?;
    Ok(frame)
}

/// The nonce of a datagram (zeros if it is too short, which `open`
/// refuses anyway).
fn nonce_of(datagram: &[u8]) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    if let Some(n) = datagram.get(4..16) {
        nonce.copy_from_slice(n);
    }
    nonce
}

/// How many counters behind the newest one a datagram may arrive (a
/// burst overtaken by later ones on the way).
pub const REPLAY_WINDOW: u64 = 64;

/// What one sender (one process: one nonce prefix) has had accepted: the
/// newest counter and which of the [`REPLAY_WINDOW`] before it came.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    top: Option<u64>,
    seen: u64,
}

impl Window {
    /// Whether counter `n` is new; records it if so.
    pub fn accept(&mut self, n: u64) -> bool {
        let Some(top) = self.top else {
            self.top = Some(n);
            self.seen = 1;
            return true;
        };
        if n > top {
            let shift = n - top;
            self.seen = if shift >= REPLAY_WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.top = Some(n);
            return true;
        }
        let behind = top - n;
        if behind >= REPLAY_WINDOW {
            return false;
        }
        let bit = 1u64 << behind;
        if self.seen & bit != 0 {
            return false;
        }
        self.seen |= bit;
        true
    }
}

/// How many senders' windows a node keeps per peer address: a restarted
/// peer draws a new prefix, and the oldest window goes.
const PREFIXES_PER_PEER: usize = 4;

/// The receive side's replay check: a window per peer address and nonce
/// prefix. A datagram recorded on the underlay and sent again does not
/// open a second time.
#[derive(Debug, Default)]
pub struct Replay {
    windows: HashMap<(IpAddr, [u8; 4]), (Window, u64)>,
    clock: u64,
}

impl Replay {
    /// Whether a genuine datagram from `peer` with `nonce` is new.
    pub fn fresh(&mut self, peer: IpAddr, nonce: [u8; 12]) -> bool {
        let mut prefix = [0u8; 4];
        prefix.copy_from_slice(&nonce[..4]);
        let mut counter = [0u8; 8];
        counter.copy_from_slice(&nonce[4..]);
        let counter = u64::from_be_bytes(counter);
        self.clock += 1;
        let clock = self.clock;
        if !self.windows.contains_key(&(peer, prefix)) {
            let mine: Vec<(IpAddr, [u8; 4])> = self
                .windows
                .keys()
                .filter(|(p, _)| *p == peer)
                .copied()
                .collect();
            if mine.len() >= PREFIXES_PER_PEER {
                let oldest = mine
                    .iter()
                    .min_by_key(|k| self.windows.get(k).map(|(_, used)| *used));
                if let Some(oldest) = oldest.copied() {
                    self.windows.remove(&oldest);
                }
            }
        }
        let (window, used) = self.windows.entry((peer, prefix)).or_default();
        *used = clock;
        window.accept(counter)
    }
}

/// The MAC a task at `addr` has on its network.
pub fn mac_of(addr: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = addr.octets();
    [0x02, 0x42, a, b, c, d]
}

/// Where a frame goes: the node of its destination task, or every peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destinations<'a> {
    One(IpAddr),
    All(&'a [IpAddr]),
    /// A task of this node (the bridge delivers it itself) or a frame too
    /// short to be Ethernet.
    None,
}

/// Where `frame` goes, with `nodes` the node of each remote task's MAC
/// and `peers` every other node of the network.
pub fn destinations<'a>(
    frame: &[u8],
    nodes: &HashMap<[u8; 6], IpAddr>,
    peers: &'a [IpAddr],
) -> Destinations<'a> {
    let Some(dst) = frame.get(..6) else {
        return Destinations::None;
    };
    // The group bit: broadcast and multicast.
    if dst[0] & 1 == 1 {
        return Destinations::All(peers);
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(dst);
    match nodes.get(&mac) {
        Some(node) => Destinations::One(*node),
        None => Destinations::All(peers),
    }
}

/// The address a peer's sealed frames are sent to.
pub fn peer_addr(node: IpAddr) -> SocketAddr {
    SocketAddr::new(node, SEALED_PORT)
}

/// `TUNSETIFF`, `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `TUNSETOFFLOAD`, `_IOW('T', 208, unsigned int)`.
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;

/// The `virtio_net_hdr` before each frame of the TAP device: it carries a
/// segmentation offload's size and checksum state, so that one read or
/// write moves a TCP burst of up to [`GSO_MAX_SEGS`] segments, sealed and
/// sent as one datagram (the underlay fragments it), rather than one
/// frame per system call.
pub const VNET_HDR: usize = 10;

/// The most segments of one offloaded burst the TAP device takes
/// (`gso_max_segs`): 40 of the largest (1,386 bytes of TCP at MTU 1426)
/// keep a sealed burst within one UDP datagram.
pub const GSO_MAX_SEGS: u32 = 40;

/// How often the tunnel's threads look whether they should stop.
const POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// Opens a TAP device named `name`, made for this descriptor: it goes
/// when the descriptor closes.
fn open_tap(name: &str) -> std::io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // struct ifreq: the name, then the flags (IFF_TAP | IFF_NO_PI).
    let mut ifr = [0u8; 40];
    let bytes = name.as_bytes();
    if bytes.len() >= 16 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a device name has at most 15 bytes",
        ));
    }
    ifr[..bytes.len()].copy_from_slice(bytes);
    // IFF_TAP | IFF_NO_PI | IFF_VNET_HDR.
    let flags: i16 = 0x0002 | 0x1000 | 0x4000;
    ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes a struct ifreq (40 bytes), which
    // `ifr` is, on the descriptor just opened.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, ifr.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6: bursts and partial checksums,
    // which the peer's TAP device takes as they are.
    let offloads: libc::c_ulong = 0x01 | 0x02 | 0x04;
    // SAFETY: TUNSETOFFLOAD takes its flags by value.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETOFFLOAD as _, offloads) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
}

/// The tunnel socket's send and receive buffers.
const SOCKET_BUFFER: libc::c_int = 8 << 20;

fn set_buffer(socket: &std::net::UdpSocket, option: libc::c_int, bytes: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt with an int option on a socket we own.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Waits at most [`POLL`] for `fd` to be readable.
fn readable(fd: std::os::fd::RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the duration of the call.
    let n = unsafe { libc::poll(&mut p, 1, POLL.as_millis() as libc::c_int) };
    n > 0 && p.revents & libc::POLLIN != 0
}

/// Where one network's frames go.
#[derive(Debug, Default)]
struct Route {
    peers: Vec<IpAddr>,
    nodes: HashMap<[u8; 6], IpAddr>,
}

/// One encrypted network on this node.
struct Net {
    key: Key,
    tap: std::fs::File,
    route: std::sync::RwLock<Route>,
    stop: std::sync::atomic::AtomicBool,
}

/// The counters of a tunnel, for tests and troubleshooting.
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes read from the TAP devices (offload headers included).
    pub bytes: std::sync::atomic::AtomicU64,
    pub sealed: std::sync::atomic::AtomicU64,
    pub opened: std::sync::atomic::AtomicU64,
    /// Genuine datagrams seen before (or too old to tell), dropped.
    pub replayed: std::sync::atomic::AtomicU64,
    pub dropped: std::sync::atomic::AtomicU64,
}

/// The node's end of every encrypted network: one UDP socket on
/// [`SEALED_PORT`] and, per network, a TAP device and a thread that seals
/// what the bridge sends into it; a thread opens what arrives and writes
/// each frame into its network's TAP device.
pub struct Tunnel {
    socket: std::net::UdpSocket,
    nets: std::sync::RwLock<HashMap<u32, std::sync::Arc<Net>>>,
    nonces: Nonces,
    stop: std::sync::atomic::AtomicBool,
    pub counters: Counters,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel").finish_non_exhaustive()
    }
}

impl Tunnel {
    /// Binds `local`:[`SEALED_PORT`] (in the caller's network namespace)
    /// and starts the receiving thread.
    pub fn bind(local: IpAddr) -> std::io::Result<std::sync::Arc<Tunnel>> {
        let socket = std::net::UdpSocket::bind(SocketAddr::new(local, SEALED_PORT))?;
        socket.set_read_timeout(Some(POLL))?;
        // A burst is up to ~55 KB: the default buffers (about 200 KB) hold
        // three, and a drop costs the task's TCP a retransmit and its
        // window. Forced (root), past the sysctl's maximum.
        for option in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
            set_buffer(&socket, option, SOCKET_BUFFER);
        }
        let tunnel = std::sync::Arc::new(Tunnel {
            socket,
            nets: Default::default(),
            nonces: Nonces::new(rand::random()),
            stop: Default::default(),
            counters: Counters::default(),
        });
        let t = tunnel.clone();
        std::thread::Builder::new()
            .name("flotilla-sealed-rx".into())
            .spawn(move || t.receive())?;
        Ok(tunnel)
    }

    fn receive(&self) {
        use std::io::Write as _;
        use std::sync::atomic::Ordering::Relaxed;
        let mut buf = vec![0u8; 65_536];
        let mut replay = Replay::default();
        while !self.stop.load(Relaxed) {
            let Ok((len, from)) = self.socket.recv_from(&mut buf) else {
                continue;
            };
            let datagram = &mut buf[..len];
            let Ok(vni) = vni_of(datagram) else {
                self.counters.dropped.fetch_add(1, Relaxed);
                continue;
            };
            let net = self.nets.read().ok().and_then(|n| n.get(&vni).cloned());
            let Some(net) = net else {
                self.counters.dropped.fetch_add(1, Relaxed);
                continue;
            };
            let nonce = nonce_of(datagram);
            match open(&net.key, datagram) {
                // Counted only once it is genuine, so that forged
                // datagrams cannot move a window.
                Ok(frame) if replay.fresh(from.ip(), nonce) => {
                    self.counters.opened.fetch_add(1, Relaxed);
                    let _ = (&net.tap).write(frame);
                }
                Ok(_) => {
                    self.counters.replayed.fetch_add(1, Relaxed);
                }
                Err(_) => {
                    self.counters.dropped.fetch_add(1, Relaxed);
                }
            }
        }
    }

    /// Whether network `vni` has its TAP device here.
    pub fn has(&self, vni: u32) -> bool {
        self.nets.read().is_ok_and(|n| n.contains_key(&vni))
    }

    /// Makes network `vni`'s TAP device ([`tap_name`]) and starts sealing
    /// what comes out of it with `key`.
    pub fn add(self: &std::sync::Arc<Self>, vni: u32, key: Key) -> std::io::Result<()> {
        let tap = open_tap(&tap_name(vni))?;
        let net = std::sync::Arc::new(Net {
            key,
            tap,
            route: Default::default(),
            stop: Default::default(),
        });
        if let Ok(mut nets) = self.nets.write() {
            if let Some(old) = nets.insert(vni, net.clone()) {
                old.stop.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let t = self.clone();
        std::thread::Builder::new()
            .name(format!("flotilla-sealed-{vni}"))
            .spawn(move || t.send(vni, &net))?;
        Ok(())
    }

    fn send(&self, vni: u32, net: &Net) {
        use std::io::Read as _;
        use std::os::fd::AsRawFd;
        use std::sync::atomic::Ordering::Relaxed;
        let mut frame = vec![0u8; 65_536];
        let mut out = Vec::with_capacity(65_536 + OVERHEAD);
        // Non-blocking: under load each frame costs one read, and poll
        // only runs when the device is empty.
        // SAFETY: fcntl on a descriptor this Net owns.
        unsafe {
            let fd = net.tap.as_raw_fd();
            let flags = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        while !net.stop.load(Relaxed) && !self.stop.load(Relaxed) {
            let len = match (&net.tap).read(&mut frame) {
                Ok(len) => len,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    readable(net.tap.as_raw_fd());
                    continue;
                }
                Err(_) => continue,
            };
            let Ok(route) = net.route.read() else { return };
            let ethernet = frame.get(VNET_HDR..len).unwrap_or_default();
            let targets: Vec<IpAddr> = match destinations(ethernet, &route.nodes, &route.peers) {
                Destinations::One(node) => vec![node],
                Destinations::All(peers) => peers.to_vec(),
                Destinations::None => continue,
            };
            drop(route);
            self.counters.bytes.fetch_add(len as u64, Relaxed);
            seal(&net.key, &self.nonces, vni, &frame[..len], &mut out);
            for node in targets {
                if self.socket.send_to(&out, peer_addr(node)).is_ok() {
                    self.counters.sealed.fetch_add(1, Relaxed);
                }
            }
        }
    }

    /// Where network `vni`'s frames go: `peers`, every other node of it,
    /// and `nodes`, the node of each of its remote tasks by MAC.
    pub fn route(&self, vni: u32, peers: Vec<IpAddr>, nodes: HashMap<[u8; 6], IpAddr>) {
        let net = self.nets.read().ok().and_then(|n| n.get(&vni).cloned());
        if let Some(net) = net {
            if let Ok(mut route) = net.route.write() {
                *route = Route { peers, nodes };
            }
        }
    }

    /// Stops network `vni`: its thread ends and its TAP device goes.
    pub fn remove(&self, vni: u32) {
        if let Some(net) = self.nets.write().ok().and_then(|mut n| n.remove(&vni)) {
            net.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The VNIs with a TAP device here.
    pub fn networks(&self) -> Vec<u32> {
        self.nets
            .read()
            .map(|n| n.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Stops every thread (within [`POLL`]); the devices go with them.
    pub fn shutdown(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut nets) = self.nets.write() {
            for (_, net) in nets.drain() {
                net.stop.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        Key::from_hex(&"ab".repeat(32)).expect("key")
    }

    #[test]
    fn a_sealed_frame_opens_with_its_key_and_nothing_else() {
        let nonces = Nonces::new([1, 2, 3, 4]);
        let frame = b"\xff\xff\xff\xff\xff\xff\x02\x42\x0a\x00\x00\x03\x08\x06 an ARP frame";
        let mut out = Vec::new();
        seal(&key(), &nonces, 4096, frame, &mut out);
        assert_eq!(out.len(), frame.len() + OVERHEAD);
        assert_eq!(vni_of(&out), Ok(4096));
        assert!(
            !out.windows(8).any(|w| w == b"ARP fram"),
            "the frame is not in clear"
        );
        let mut copy = out.clone();
        assert_eq!(open(&key(), &mut copy).expect("open"), frame);
        // Another key, a changed byte, or another network: dropped.
        let other = Key::from_hex(&"cd".repeat(32)).expect("key");
        assert_eq!(open(&other, &mut out.clone()), Err(SealError::Forged(4096)));
        let mut flipped = out.clone();
        let last = flipped.len() - 20;
        flipped[last] ^= 1;
        assert_eq!(open(&key(), &mut flipped), Err(SealError::Forged(4096)));
        let mut moved = out.clone();
        moved[..4].copy_from_slice(&4097u32.to_be_bytes());
        assert_eq!(open(&key(), &mut moved), Err(SealError::Forged(4097)));
        assert_eq!(open(&key(), &mut [0u8; 10]), Err(SealError::Short(10)));
        // Two seals of one frame differ (a fresh nonce each).
        let mut again = Vec::new();
        seal(&key(), &nonces, 4096, frame, &mut again);
        assert_ne!(again, out);
        assert!(Key::from_hex("00").is_err());
    }

    #[test]
    fn a_frame_goes_to_the_node_of_its_task_or_to_every_peer() {
        let peers: Vec<IpAddr> = vec![
            "192.168.0.2".parse().expect("ip"),
            "192.168.0.3".parse().expect("ip"),
        ];
        let task = Ipv4Addr::new(10, 0, 9, 5);
        let nodes = HashMap::from([(mac_of(task), peers[1])]);
        let mut frame = vec![0u8; 60];
        frame[..6].copy_from_slice(&mac_of(task));
        assert_eq!(
            destinations(&frame, &nodes, &peers),
            Destinations::One(peers[1])
        );
        frame[..6].copy_from_slice(&[0xff; 6]);
        assert_eq!(
            destinations(&frame, &nodes, &peers),
            Destinations::All(&peers)
        );
        frame[..6].copy_from_slice(&mac_of(Ipv4Addr::new(10, 0, 9, 77)));
        assert_eq!(
            destinations(&frame, &nodes, &peers),
            Destinations::All(&peers)
        );
        assert_eq!(destinations(&[0u8; 3], &nodes, &peers), Destinations::None);
        assert_eq!(SEALED_MTU, 1426);
    }

    /// `cargo test --release -p flotilla-agent --lib seal_rate -- --ignored
    /// --nocapture`: what sealing costs per byte on this machine.
    #[test]
    #[ignore]
    fn seal_rate() {
        let nonces = Nonces::new([0; 4]);
        let frame = vec![7u8; 55_000];
        let mut out = Vec::new();
        let start = std::time::Instant::now();
        let n = 20_000;
        for _ in 0..n {
            seal(&key(), &nonces, 1, &frame, &mut out);
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "seal: {:.2} Gbit/s",
            (n * frame.len()) as f64 * 8.0 / secs / 1e9
        );
    }

    #[test]
    fn a_datagram_opens_once_and_late_ones_within_the_window_still_do() {
        let mut w = Window::default();
        assert!(w.accept(10));
        assert!(!w.accept(10), "the same again");
        assert!(w.accept(12));
        assert!(w.accept(11), "overtaken, within the window");
        assert!(!w.accept(11));
        assert!(w.accept(100));
        assert!(!w.accept(100 - REPLAY_WINDOW), "older than the window");
        assert!(w.accept(100 - REPLAY_WINDOW + 1));
        assert!(
            w.accept(100 + 2 * REPLAY_WINDOW),
            "a jump clears the window"
        );
        assert!(w.accept(100 + REPLAY_WINDOW + 1));

        let mut r = Replay::default();
        let peer: IpAddr = "192.168.0.2".parse().expect("ip");
        let nonce = |prefix: u8, n: u64| {
            let mut out = [prefix; 12];
            out[4..].copy_from_slice(&n.to_be_bytes());
            out
        };
        assert!(r.fresh(peer, nonce(1, 0)));
        assert!(!r.fresh(peer, nonce(1, 0)));
        // A restarted peer: a new prefix, counting from 0 again.
        assert!(r.fresh(peer, nonce(2, 0)));
        // Another peer with the same prefix is another sender.
        assert!(r.fresh("192.168.0.3".parse().expect("ip"), nonce(1, 0)));
        for p in 3..=6 {
            assert!(r.fresh(peer, nonce(p, 0)));
        }
        assert!(r.windows.keys().filter(|(p, _)| *p == peer).count() <= PREFIXES_PER_PEER);
    }
}
