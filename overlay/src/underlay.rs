//! The node's one UDP socket, with batched I/O: `recvmmsg` with UDP GRO
//! (the kernel hands over up to 64 KB of equal-sized datagrams at once) and
//! `sendmmsg` with UDP GSO (one call sends a run of equal-sized datagrams to
//! one peer). A userspace tunnel is bound by system calls per packet, not by
//! cryptography; these two cut them by one to two orders of magnitude.

use std::io;
use std::mem::{size_of, zeroed, MaybeUninit};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::io::Interest;

use crate::node::Peer;

/// Largest datagram (or GRO batch) one receive slot holds.
pub(crate) const RECV_SLOT: usize = 65_536;
/// Receive slots per `recvmmsg`.
pub(crate) const RECV_SLOTS: usize = 8;
/// Most messages per `sendmmsg`.
const SEND_BATCH: usize = 64;
/// Most datagrams in one GSO message (the kernel's `UDP_MAX_SEGMENTS`).
const GSO_MAX_SEGMENTS: usize = 64;
/// Most bytes in one GSO message.
const GSO_MAX_BYTES: usize = 65_000;

/// The underlay socket.
pub(crate) struct Underlay {
    socket: tokio::net::UdpSocket,
    local: SocketAddr,
    gso: AtomicBool,
    gro: bool,
}

impl Underlay {
    /// Binds the socket (inside the calling thread's network namespace).
    /// Must run inside a tokio runtime.
    pub(crate) fn bind(addr: SocketAddr) -> io::Result<Underlay> {
        let domain = socket2::Domain::for_address(addr);
        let sock =
            socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
        if addr.is_ipv6() {
            // Dual stack when bound to [::], like wireguard-go.
            let _ = sock.set_only_v6(false);
        }
        sock.set_nonblocking(true)?;
        // Large buffers absorb bursts of GSO batches; root may exceed rmem_max.
        for size in [8 << 20, 4 << 20, 1 << 20] {
            if set_buf_force(&sock, libc::SO_RCVBUFFORCE, size).is_ok()
                || sock.set_recv_buffer_size(size as usize).is_ok()
            {
                break;
            }
        }
        for size in [8 << 20, 4 << 20, 1 << 20] {
            if set_buf_force(&sock, libc::SO_SNDBUFFORCE, size).is_ok()
                || sock.set_send_buffer_size(size as usize).is_ok()
            {
                break;
            }
        }
        sock.bind(&addr.into())?;
        let gro = setsockopt_int(sock.as_raw_fd(), libc::SOL_UDP, libc::UDP_GRO, 1).is_ok();
        let std_sock: std::net::UdpSocket = sock.into();
        let local = std_sock.local_addr()?;
        let socket = tokio::net::UdpSocket::from_std(std_sock)?;
        Ok(Underlay {
            socket,
            local,
            gso: AtomicBool::new(true),
            gro,
        })
    }

    /// The bound address.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Whether UDP GSO is (still) in use.
    pub(crate) fn gso(&self) -> bool {
        self.gso.load(Ordering::Relaxed)
    }

    /// Whether UDP GRO is on.
    pub(crate) fn gro(&self) -> bool {
        self.gro
    }

    /// Waits until the socket may have datagrams.
    pub(crate) async fn readable(&self) -> io::Result<()> {
        self.socket.readable().await
    }

    /// Waits until the socket may accept datagrams.
    pub(crate) async fn writable(&self) -> io::Result<()> {
        self.socket.writable().await
    }

    /// Receives up to [`RECV_SLOTS`] messages without blocking.
    pub(crate) fn try_recv_batch(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        self.socket.try_io(Interest::READABLE, || {
            recv_batch(self.socket.as_raw_fd(), batch)
        })
    }

    /// Sends one datagram without blocking (used for rare control messages).
    pub(crate) fn try_send_to(&self, buf: &[u8], dst: SocketAddr) -> io::Result<usize> {
        let mut addr = MaybeUninit::<libc::sockaddr_in6>::uninit();
        let len = write_sockaddr(self.map_dst(dst), &mut addr);
        // SAFETY: a valid buffer and an initialised address of `len` bytes.
        let n = unsafe {
            libc::sendto(
                self.socket.as_raw_fd(),
                buf.as_ptr() as *const libc::c_void,
                buf.len(),
                libc::MSG_DONTWAIT,
                addr.as_ptr() as *const libc::sockaddr,
                len,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    fn map_dst(&self, dst: SocketAddr) -> SocketAddr {
        match (self.local, dst) {
            (SocketAddr::V6(_), SocketAddr::V4(v4)) => {
                SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
            }
            _ => dst,
        }
    }

    /// Sends the outbox's datagrams from entry `from` on, without blocking.
    /// Returns how many entries were handled (sent, or dropped because of a
    /// hard error, which is reported through `on_error`). `WouldBlock` is
    /// returned only when nothing could be sent.
    ///
    /// The first attempt goes straight to the kernel: a UDP socket almost
    /// always has room, and tokio's readiness flag may not be set yet on a
    /// fresh socket. After a `WouldBlock`, callers wait for
    /// [`Underlay::writable`] and retry with `after_wait` set, which lets
    /// tokio clear its readiness flag if the socket is still full.
    pub(crate) fn try_send_outbox(
        &self,
        outbox: &Outbox,
        from: usize,
        after_wait: bool,
        on_error: &mut dyn FnMut(&OutDatagram, &io::Error),
    ) -> io::Result<usize> {
        let fd = self.socket.as_raw_fd();
        let gso = self.gso();
        let send = || send_batch(fd, outbox, from, gso, &|a| self.map_dst(a));
        let result = if after_wait {
            self.socket.try_io(Interest::WRITABLE, send)
        } else {
            send()
        };
        match result {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(e),
            Err(e) if gso && is_gso_refusal(&e) => {
                tracing::warn!("UDP GSO refused by the kernel ({e}); sending datagrams one by one");
                self.gso.store(false, Ordering::Relaxed);
                Ok(0)
            }
            Err(e) => {
                // A hard error on the first message: skip it and move on.
                on_error(&outbox.entries[from], &e);
                Ok(1)
            }
        }
    }
}

fn is_gso_refusal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO) | Some(libc::EINVAL) | Some(libc::ENOPROTOOPT) | Some(libc::EOPNOTSUPP)
    )
}

fn setsockopt_int(fd: i32, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: a valid fd and a pointer to an int of the declared size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const i32 as *const libc::c_void,
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn set_buf_force(sock: &socket2::Socket, name: i32, size: i32) -> io::Result<()> {
    setsockopt_int(sock.as_raw_fd(), libc::SOL_SOCKET, name, size)
}

/// A datagram queued for sending.
pub(crate) struct OutDatagram {
    pub offset: usize,
    pub len: usize,
    pub dst: SocketAddr,
    /// The peer it is for (checked for removal before a delayed send).
    pub peer: Option<Arc<Peer>>,
}

/// Datagrams waiting to be sent, back to back in one buffer so that runs of
/// equal-sized datagrams to one peer go out as a single GSO message.
pub(crate) struct Outbox {
    buf: Vec<u8>,
    used: usize,
    pub entries: Vec<OutDatagram>,
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox {
            // Grows on demand (a flood of 64 KB TSO frames to many peers).
            buf: vec![0; 128 * 1024],
            used: 0,
            entries: Vec::new(),
        }
    }
}

impl Outbox {
    /// Space for the next datagram of at most `max` bytes.
    pub(crate) fn slot(&mut self, max: usize) -> &mut [u8] {
        if self.used + max > self.buf.len() {
            let new_len = (self.buf.len() * 2).max(self.used + max);
            self.buf.resize(new_len, 0);
        }
        &mut self.buf[self.used..self.used + max]
    }

    /// Records that the last slot now holds a datagram of `len` bytes.
    pub(crate) fn commit(&mut self, len: usize, dst: SocketAddr, peer: Option<Arc<Peer>>) {
        self.entries.push(OutDatagram {
            offset: self.used,
            len,
            dst,
            peer,
        });
        self.used += len;
    }

    /// The bytes of entry `i`.
    pub(crate) fn data(&self, i: usize) -> &[u8] {
        let e = &self.entries[i];
        &self.buf[e.offset..e.offset + e.len]
    }

    /// Copies a datagram in.
    pub(crate) fn push(&mut self, data: &[u8], dst: SocketAddr, peer: Option<Arc<Peer>>) {
        self.slot(data.len()).copy_from_slice(data);
        self.commit(data.len(), dst, peer);
    }

    /// Forgets everything (keeps the memory).
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.used = 0;
    }

    /// Length of the GSO run starting at entry `i`: consecutive datagrams to
    /// one destination, all of the first one's size except possibly a
    /// shorter last one.
    fn run_len(&self, i: usize, gso: bool) -> usize {
        if !gso {
            return 1;
        }
        let first = &self.entries[i];
        let mut n = 1;
        let mut bytes = first.len;
        while i + n < self.entries.len() && n < GSO_MAX_SEGMENTS {
            let prev = &self.entries[i + n - 1];
            let e = &self.entries[i + n];
            if e.dst != first.dst
                || e.offset != prev.offset + prev.len
                || prev.len != first.len
                || e.len > first.len
                || bytes + e.len > GSO_MAX_BYTES
            {
                break;
            }
            bytes += e.len;
            n += 1;
            if e.len < first.len {
                break;
            }
        }
        n
    }
}

fn send_batch(
    fd: i32,
    outbox: &Outbox,
    from: usize,
    gso: bool,
    map: &dyn Fn(SocketAddr) -> SocketAddr,
) -> io::Result<usize> {
    const CMSG_SPACE: usize = 32;
    let mut hdrs: [MaybeUninit<libc::mmsghdr>; SEND_BATCH] =
        [const { MaybeUninit::uninit() }; SEND_BATCH];
    let mut iovs: [MaybeUninit<libc::iovec>; SEND_BATCH] =
        [const { MaybeUninit::uninit() }; SEND_BATCH];
    let mut addrs: [MaybeUninit<libc::sockaddr_in6>; SEND_BATCH] =
        [const { MaybeUninit::uninit() }; SEND_BATCH];
    let mut cmsgs = [[0u64; CMSG_SPACE / 8]; SEND_BATCH];
    let mut runs = [0usize; SEND_BATCH];
    let mut msgs = 0;
    let mut i = from;
    while i < outbox.entries.len() && msgs < SEND_BATCH {
        let n = outbox.run_len(i, gso);
        let first = &outbox.entries[i];
        let total: usize = outbox.entries[i..i + n].iter().map(|e| e.len).sum();
        let addr_len = write_sockaddr(map(first.dst), &mut addrs[msgs]);
        iovs[msgs].write(libc::iovec {
            iov_base: outbox.buf[first.offset..].as_ptr() as *mut libc::c_void,
            iov_len: total,
        });
        // SAFETY: zeroed msghdr is a valid "empty" value.
        let mut hdr: libc::msghdr = unsafe { zeroed() };
        hdr.msg_name = addrs[msgs].as_mut_ptr() as *mut libc::c_void;
        hdr.msg_namelen = addr_len;
        hdr.msg_iov = iovs[msgs].as_mut_ptr();
        hdr.msg_iovlen = 1;
        if n > 1 {
            let cbuf = cmsgs[msgs].as_mut_ptr() as *mut u8;
            hdr.msg_control = cbuf as *mut libc::c_void;
            // SAFETY: CMSG_SPACE(2) <= 32 bytes of control buffer, aligned to 8.
            unsafe {
                hdr.msg_controllen = libc::CMSG_SPACE(size_of::<u16>() as u32) as usize;
                let c = libc::CMSG_FIRSTHDR(&hdr);
                (*c).cmsg_level = libc::SOL_UDP;
                (*c).cmsg_type = libc::UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
                std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, first.len as u16);
            }
        }
        hdrs[msgs].write(libc::mmsghdr {
            msg_hdr: hdr,
            msg_len: 0,
        });
        runs[msgs] = n;
        msgs += 1;
        i += n;
    }
    if msgs == 0 {
        return Ok(0);
    }
    // SAFETY: the first `msgs` headers are initialised and point into live buffers.
    let sent = unsafe {
        libc::sendmmsg(
            fd,
            hdrs.as_mut_ptr() as *mut libc::mmsghdr,
            msgs as u32,
            libc::MSG_DONTWAIT,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(runs[..sent as usize].iter().sum())
}

fn write_sockaddr(addr: SocketAddr, out: &mut MaybeUninit<libc::sockaddr_in6>) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_in fits in sockaddr_in6 storage.
            let sin = unsafe { &mut *(out.as_mut_ptr() as *mut libc::sockaddr_in) };
            *sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            out.write(libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            });
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

fn read_sockaddr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let sin = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let sin6 = unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            let port = u16::from_be(sin6.sin6_port);
            // Report v4-mapped senders as IPv4 so endpoints compare equal.
            Some(match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::new(IpAddr::V4(v4), port),
                None => SocketAddr::V6(SocketAddrV6::new(
                    ip,
                    port,
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )),
            })
        }
        _ => None,
    }
}

/// One received message: a datagram or a GRO batch of equal-sized ones.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecvMeta {
    pub len: usize,
    pub src: SocketAddr,
    /// Size of each datagram in the batch (== len when not coalesced).
    pub segment: usize,
}

/// Buffers for one `recvmmsg`.
pub(crate) struct RecvBatch {
    bufs: Vec<u8>,
    pub meta: Vec<RecvMeta>,
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch {
            bufs: vec![0; RECV_SLOT * RECV_SLOTS],
            meta: Vec::with_capacity(RECV_SLOTS),
        }
    }
}

impl RecvBatch {
    /// The bytes of message `i` and its metadata, mutable.
    pub(crate) fn message(&mut self, i: usize) -> (&mut [u8], RecvMeta) {
        let m = self.meta[i];
        (&mut self.bufs[i * RECV_SLOT..i * RECV_SLOT + m.len], m)
    }
}

fn recv_batch(fd: i32, batch: &mut RecvBatch) -> io::Result<usize> {
    const CMSG_SPACE: usize = 64;
    let mut hdrs: [MaybeUninit<libc::mmsghdr>; RECV_SLOTS] =
        [const { MaybeUninit::uninit() }; RECV_SLOTS];
    let mut iovs: [MaybeUninit<libc::iovec>; RECV_SLOTS] =
        [const { MaybeUninit::uninit() }; RECV_SLOTS];
    // SAFETY: all-zero sockaddr_storage is valid.
    let mut addrs: [libc::sockaddr_storage; RECV_SLOTS] = unsafe { zeroed() };
    let mut cmsgs = [[0u64; CMSG_SPACE / 8]; RECV_SLOTS];
    let base = batch.bufs.as_mut_ptr();
    for i in 0..RECV_SLOTS {
        iovs[i].write(libc::iovec {
            // SAFETY: slot i lies inside `bufs`.
            iov_base: unsafe { base.add(i * RECV_SLOT) } as *mut libc::c_void,
            iov_len: RECV_SLOT,
        });
        // SAFETY: zeroed msghdr is a valid "empty" value.
        let mut hdr: libc::msghdr = unsafe { zeroed() };
        hdr.msg_name = &mut addrs[i] as *mut _ as *mut libc::c_void;
        hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        hdr.msg_iov = iovs[i].as_mut_ptr();
        hdr.msg_iovlen = 1;
        hdr.msg_control = cmsgs[i].as_mut_ptr() as *mut libc::c_void;
        hdr.msg_controllen = CMSG_SPACE;
        hdrs[i].write(libc::mmsghdr {
            msg_hdr: hdr,
            msg_len: 0,
        });
    }
    // SAFETY: all RECV_SLOTS headers are initialised and point into live buffers.
    let n = unsafe {
        libc::recvmmsg(
            fd,
            hdrs.as_mut_ptr() as *mut libc::mmsghdr,
            RECV_SLOTS as u32,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    batch.meta.clear();
    for i in 0..n as usize {
        // SAFETY: initialised above and filled by the kernel.
        let h = unsafe { hdrs[i].assume_init_ref() };
        let len = h.msg_len as usize;
        let Some(src) = read_sockaddr(&addrs[i]) else {
            continue;
        };
        let mut segment = len;
        // SAFETY: walking the control messages the kernel wrote.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                    let s = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const i32);
                    if s > 0 {
                        segment = s as usize;
                    }
                }
                c = libc::CMSG_NXTHDR(&h.msg_hdr, c);
            }
        }
        batch.meta.push(RecvMeta {
            len,
            src,
            segment: segment.max(1),
        });
    }
    Ok(batch.meta.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox(lens: &[(usize, u16)]) -> Outbox {
        let mut o = Outbox::default();
        for &(len, port) in lens {
            let dst: SocketAddr = ([198, 18, 0, 1], port).into();
            o.push(&vec![7u8; len], dst, None);
        }
        o
    }

    #[test]
    fn runs_group_equal_datagrams_to_one_destination() {
        let o = outbox(&[(1000, 1), (1000, 1), (1000, 1), (400, 1), (1000, 1)]);
        assert_eq!(o.run_len(0, true), 4, "a shorter datagram ends the run");
        assert_eq!(o.run_len(4, true), 1);
        assert_eq!(o.run_len(0, false), 1);
        let o = outbox(&[(1000, 1), (1000, 2), (1000, 2)]);
        assert_eq!(o.run_len(0, true), 1, "other destination");
        assert_eq!(o.run_len(1, true), 2);
        let o = outbox(&[(100, 1), (200, 1)]);
        assert_eq!(o.run_len(0, true), 1, "a longer datagram cannot follow");
        let o = outbox(&vec![(1400, 1); 100]);
        assert_eq!(o.run_len(0, true), 46, "64 KB limit");
    }

    #[tokio::test]
    async fn a_gso_batch_arrives_as_separate_datagrams() {
        let rx = Underlay::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let tx = Underlay::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut o = Outbox::default();
        for i in 0..10u8 {
            let len = if i == 9 { 300 } else { 1200 };
            o.push(&vec![i; len], rx.local_addr(), None);
        }
        let mut sent = 0;
        while sent < o.entries.len() {
            tx.writable().await.unwrap();
            match tx.try_send_outbox(&o, sent, true, &mut |_, e| panic!("{e}")) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut batch = RecvBatch::default();
        while got.len() < 10 {
            rx.readable().await.unwrap();
            let n = match rx.try_recv_batch(&mut batch) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("{e}"),
            };
            for i in 0..n {
                let (data, meta) = batch.message(i);
                assert_eq!(meta.src, tx.local_addr());
                for d in data.chunks(meta.segment) {
                    got.push(d.to_vec());
                }
            }
        }
        assert_eq!(got.len(), 10);
        for (i, d) in got.iter().enumerate() {
            assert!(d.iter().all(|&b| b == i as u8), "datagram {i} intact");
            assert_eq!(d.len(), if i == 9 { 300 } else { 1200 });
        }
    }
}
