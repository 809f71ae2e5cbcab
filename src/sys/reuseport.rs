//! Steering the connections of a `SO_REUSEPORT` group with a classic BPF program
//! (`SO_ATTACH_REUSEPORT_CBPF`, Linux 4.5).
//!
//! The kernel runs the group's program for every new connection and hands the connection to
//! the socket at the position the program returns. Ours picks, by the connection's flow hash,
//! one of a list of positions, so a socket left out of the list gets no new connection while
//! it stays open and its worker drains what is queued on it.

use std::io;
use std::os::fd::BorrowedFd;

use nix::sys::socket::{setsockopt, sockopt};

/// The most positions a program can list: 3 instructions plus 2 per position, within the
/// kernel's limit of 4096 instructions.
pub(crate) const MAX_TARGETS: usize = 2046;

/// Attaches to the group of `socket` a program that spreads new connections over the group
/// positions `targets` by flow hash.
pub(crate) fn steer(socket: BorrowedFd<'_>, targets: &[u32]) -> io::Result<()> {
    let mut program = program(targets)?;
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    setsockopt(&socket, sockopt::AttachReusePortCbpf, &fprog).map_err(io::Error::from)
}

/// The program: `A = rxhash % n; return targets[A]`, the lookup as a chain of comparisons.
fn program(targets: &[u32]) -> io::Result<Vec<libc::sock_filter>> {
    if targets.is_empty() || targets.len() > MAX_TARGETS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cannot steer over {} sockets", targets.len()),
        ));
    }
    let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let rxhash = (libc::SKF_AD_OFF + libc::SKF_AD_RXHASH) as u32;
    let mut prog = vec![
        op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, rxhash),
        op(
            libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K,
            0,
            0,
            targets.len() as u32,
        ),
    ];
    for (i, &target) in targets.iter().enumerate() {
        // If A == i fall through to `return target`, else skip it.
        prog.push(op(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            0,
            1,
            i as u32,
        ));
        prog.push(op(libc::BPF_RET | libc::BPF_K, 0, 0, target));
    }
    prog.push(op(libc::BPF_RET | libc::BPF_K, 0, 0, targets[0]));
    Ok(prog)
}

#[cfg(test)]
mod tests {
    use std::io::ErrorKind;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;

    /// Three sockets in a group, steered to positions 0 and 2: position 1 gets nothing.
    #[test]
    fn steered_group_leaves_a_socket_out() {
        let bind = |port: u16| {
            let fd = crate::sys::bind_tcp(
                format!("127.0.0.1:{port}").parse().unwrap(),
                true,
                false,
                128,
            )
            .unwrap();
            fd
        };
        let first: TcpListener = bind(0);
        let port = first.local_addr().unwrap().port();
        let group = [first, bind(port), bind(port)];
        super::steer(group[0].as_fd(), &[0, 2]).unwrap();
        let clients: Vec<TcpStream> = (0..60)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
            .collect();
        let mut counts = [0; 3];
        for (i, l) in group.iter().enumerate() {
            l.set_nonblocking(true).unwrap();
            loop {
                match l.accept() {
                    Ok(_) => counts[i] += 1,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("accept: {e}"),
                }
            }
        }
        assert_eq!(counts.iter().sum::<usize>(), clients.len(), "{counts:?}");
        assert_eq!(counts[1], 0, "position 1 is not a target: {counts:?}");
        assert!(
            counts[0] > 0 && counts[2] > 0,
            "both targets serve: {counts:?}"
        );
    }
}
