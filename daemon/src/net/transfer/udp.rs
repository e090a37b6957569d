//! The transfer endpoint's UDP socket, with a receive buffer large enough for bursts.
//!
//! The kernel's default UDP receive buffer (`net.core.rmem_default`, 208 KiB on most
//! distributions) holds a fraction of a millisecond of a fast link. When the daemon is
//! not scheduled in time (a busy GPU node, or many daemons on a few cores) the kernel
//! drops whatever arrives next, QUIC counts it as loss, and the sender's congestion
//! window shrinks. In cold starts of 8 emulated nodes sharing 2 vCPUs, 1.7-2.3 % of
//! the peers' datagrams were dropped this way with the default buffer and none with
//! this one, and the last node finished about 0.1 x T_limit sooner (benches/RESULTS.md,
//! session 18). quic-go asks for 7 MiB for the same reason.

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

use super::super::NetError;

/// The receive buffer asked for, as `SO_RCVBUF` takes it. Linux doubles it for its
/// bookkeeping, so the socket holds up to 8 MiB of queued datagrams: about 3 ms of a
/// 25 Gbit/s link. It is memory the kernel uses only while datagrams wait.
pub const RECEIVE_BUFFER: usize = 4 << 20;

/// The size the kernel reports once it granted [`RECEIVE_BUFFER`] in full (doubled).
const GRANTED_BUFFER: usize = 2 * RECEIVE_BUFFER;

/// Binds the endpoint's socket and enlarges its receive buffer. `SO_RCVBUF` is capped
/// by `net.core.rmem_max`; with `CAP_NET_ADMIN` the cap is bypassed (`SO_RCVBUFFORCE`).
/// A buffer left smaller than asked is logged, with the sysctl that fixes it.
pub fn bind(addr: SocketAddr) -> Result<std::net::UdpSocket, NetError> {
    let io = |context: &str, source| NetError::Io {
        context: format!("{context} for the transfer endpoint {addr}"),
        source,
    };
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| io("creating the UDP socket", e))?;
    socket
        .bind(&addr.into())
        .map_err(|e| io("binding the UDP socket", e))?;
    let before = socket.recv_buffer_size().unwrap_or(0);
    let got = enlarge_receive_buffer(&socket);
    if got < GRANTED_BUFFER {
        tracing::warn!(
            wanted_kib = GRANTED_BUFFER / 1024,
            got_kib = got / 1024,
            "the transfer socket's UDP receive buffer is smaller than wanted; bursts that \
             arrive while shoald waits for a CPU are dropped and slow transfers down. Raise \
             it with `sysctl -w net.core.rmem_max={RECEIVE_BUFFER}` or give shoald \
             CAP_NET_ADMIN"
        );
    } else {
        tracing::debug!(
            before_kib = before / 1024,
            got_kib = got / 1024,
            "transfer socket receive buffer"
        );
    }
    Ok(socket.into())
}

/// Returns the receive buffer's size after trying `SO_RCVBUF`, then `SO_RCVBUFFORCE`.
fn enlarge_receive_buffer(socket: &Socket) -> usize {
    // Failing to enlarge is not fatal: the default buffer works, only less well.
    let _ = socket.set_recv_buffer_size(RECEIVE_BUFFER);
    let got = socket.recv_buffer_size().unwrap_or(0);
    if got >= GRANTED_BUFFER {
        return got;
    }
    if force_receive_buffer(socket, RECEIVE_BUFFER) {
        return socket.recv_buffer_size().unwrap_or(got);
    }
    got
}

/// `SO_RCVBUFFORCE`: ignores `net.core.rmem_max`, needs `CAP_NET_ADMIN`. False if refused.
#[cfg(target_os = "linux")]
fn force_receive_buffer(socket: &Socket, bytes: usize) -> bool {
    use std::os::fd::AsRawFd as _;
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: the fd is open for the call's duration (borrowed from `socket`), and the
    // option value points at a live c_int whose exact size is passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    rc == 0
}

#[cfg(not(target_os = "linux"))]
fn force_receive_buffer(_socket: &Socket, _bytes: usize) -> bool {
    false
}

/// The kernel's count of datagrams dropped at one socket because its receive buffer was
/// full: the `drops` column of `/proc/net/udp` (or `udp6`), found by the socket's inode.
/// Where the buffer could not be enlarged, this is how an operator sees it hurting.
#[derive(Debug, Clone, Copy)]
pub struct SocketDrops {
    inode: u64,
    ipv6: bool,
}

impl SocketDrops {
    /// The counter of `socket`, or `None` where `/proc` does not say (not Linux).
    pub fn of(socket: &std::net::UdpSocket) -> Option<SocketDrops> {
        use std::os::fd::AsRawFd as _;
        use std::os::unix::fs::MetadataExt as _;
        // /proc/self/fd/N resolves to the socket itself, whose inode /proc/net/udp lists.
        let inode = std::fs::metadata(format!("/proc/self/fd/{}", socket.as_raw_fd()))
            .ok()?
            .ino();
        let ipv6 = socket.local_addr().ok()?.is_ipv6();
        Some(SocketDrops { inode, ipv6 })
    }

    /// Datagrams dropped so far, or `None` if the socket is not listed.
    pub fn read(&self) -> Option<u64> {
        let table = if self.ipv6 {
            "/proc/net/udp6"
        } else {
            "/proc/net/udp"
        };
        parse_drops(&std::fs::read_to_string(table).ok()?, self.inode)
    }
}

/// The `drops` column (the last) of the row whose `inode` column (the tenth) matches.
fn parse_drops(table: &str, inode: u64) -> Option<u64> {
    table.lines().skip(1).find_map(|row| {
        let fields: Vec<&str> = row.split_whitespace().collect();
        (fields.get(9)?.parse::<u64>().ok()? == inode)
            .then(|| fields.last()?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drops_column_is_read_from_the_row_of_the_inode() {
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  1: 0100007F:13BC 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 0
  2: 0100007F:13BD 00000000:0000 07 00000000:00034000 00:00000000 00000000     0        0 5151 2 0000000000000000 1723
";
        assert_eq!(parse_drops(table, 5151), Some(1723));
        assert_eq!(parse_drops(table, 4242), Some(0));
        assert_eq!(parse_drops(table, 99), None);
        assert_eq!(parse_drops("", 5151), None);
    }

    #[test]
    fn datagrams_the_buffer_cannot_hold_are_counted() {
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket2::SockRef::from(&receiver)
            .set_recv_buffer_size(4096)
            .unwrap();
        let drops = SocketDrops::of(&receiver).expect("listed in /proc/net/udp");
        assert_eq!(drops.read(), Some(0));
        // Nobody reads, and the buffer holds a few datagrams.
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = receiver.local_addr().unwrap();
        for _ in 0..2000 {
            sender.send_to(&[0u8; 1024], to).unwrap();
        }
        let dropped = drops.read().unwrap();
        assert!(dropped > 0 && dropped < 2000, "dropped {dropped}");
    }

    #[test]
    fn the_socket_is_bound_and_its_receive_buffer_enlarged() {
        let socket = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        assert!(addr.port() != 0);
        let got = Socket::from(socket).recv_buffer_size().unwrap();
        let default = Socket::new(Domain::IPV4, Type::DGRAM, None)
            .unwrap()
            .recv_buffer_size()
            .unwrap();
        // As root (CI) the force path lifts any rmem_max; otherwise the cap decides,
        // and the buffer is still never smaller than the default.
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if root {
            assert!(got >= GRANTED_BUFFER, "got {got} bytes as root");
        } else {
            assert!(got >= default, "got {got}, default {default}");
        }
    }

    #[test]
    fn binding_a_taken_port_names_the_address() {
        let first = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = first.local_addr().unwrap();
        let err = bind(addr).unwrap_err().to_string();
        assert!(err.contains(&addr.to_string()), "{err}");
    }
}
