//! The policy routing of client address preservation, over rtnetlink.
//!
//! The app's replies to a connection the proxy made from a client's address
//! are addressed to that client, which the main table routes out of the pod.
//! The `mangle` rules ([`super::rules::render_preserve`]) mark them; these two
//! entries deliver marked packets locally, to the proxy's transparent socket:
//!
//! ```text
//! ip rule add fwmark 0x836/0xfff lookup 2102 priority 32000
//! ip route add local 0.0.0.0/0 dev lo table 2102      (and ::/0 for IPv6)
//! ```
//!
//! They are sent as rtnetlink messages on a `NETLINK_ROUTE` socket rather than
//! by running `ip`: two fixed messages are about a hundred lines, and the image
//! then needs no iproute2 (nor its libraries) beside iptables. Both are created
//! with `NLM_F_EXCL`, and "exists" counts as done, so init stays idempotent.

use super::rules::{Family, PRESERVE_MARK, PRESERVE_MASK, ROUTE_PRIORITY, ROUTE_TABLE};
use std::io;

const NLMSG_ERROR: u16 = 2;
const RTM_NEWROUTE: u16 = 24;
const RTM_NEWRULE: u16 = 32;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
// linux/fib_rules.h
const FR_ACT_TO_TBL: u8 = 1;
const FRA_PRIORITY: u16 = 6;
const FRA_FWMARK: u16 = 10;
const FRA_TABLE: u16 = 15;
const FRA_FWMASK: u16 = 16;
// linux/rtnetlink.h
const RTA_OIF: u16 = 4;
const RTA_TABLE: u16 = 15;
const RTN_LOCAL: u8 = 2;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_HOST: u8 = 254;

/// The `ip` commands these messages are equivalent to, for `--dry-run`.
pub fn plan(family: Family) -> Vec<String> {
    let (flag, any) = match family {
        Family::V4 => ("", "0.0.0.0/0"),
        Family::V6 => ("-6 ", "::/0"),
    };
    vec![
        format!(
            "ip {flag}rule add fwmark {PRESERVE_MARK:#x}/{PRESERVE_MASK:#x} lookup {ROUTE_TABLE} priority {ROUTE_PRIORITY}"
        ),
        format!("ip {flag}route add local {any} dev lo table {ROUTE_TABLE}"),
    ]
}

fn af(family: Family) -> u8 {
    match family {
        Family::V4 => libc::AF_INET as u8,
        Family::V6 => libc::AF_INET6 as u8,
    }
}

/// One netlink request under construction.
struct Msg(Vec<u8>);

impl Msg {
    fn new(kind: u16, header: [u8; 12]) -> Msg {
        let mut b = Vec::with_capacity(64);
        b.extend_from_slice(&0u32.to_ne_bytes()); // length, set in finish
        b.extend_from_slice(&kind.to_ne_bytes());
        let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
        b.extend_from_slice(&flags.to_ne_bytes());
        b.extend_from_slice(&1u32.to_ne_bytes()); // sequence
        b.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
        b.extend_from_slice(&header);
        Msg(b)
    }

    fn attr_u32(mut self, kind: u16, value: u32) -> Msg {
        self.0.extend_from_slice(&8u16.to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(&value.to_ne_bytes());
        self
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[..4].copy_from_slice(&len.to_ne_bytes());
        self.0
    }
}

/// `fwmark MARK/MASK lookup TABLE priority PRIORITY` for `family`.
pub fn rule_message(family: Family) -> Vec<u8> {
    // struct fib_rule_hdr: family, dst_len, src_len, tos, table, res1, res2,
    // action, then u32 flags. The table is in FRA_TABLE (it exceeds a u8).
    let mut hdr = [0u8; 12];
    hdr[0] = af(family);
    hdr[7] = FR_ACT_TO_TBL;
    Msg::new(RTM_NEWRULE, hdr)
        .attr_u32(FRA_PRIORITY, ROUTE_PRIORITY)
        .attr_u32(FRA_FWMARK, PRESERVE_MARK)
        .attr_u32(FRA_FWMASK, PRESERVE_MASK)
        .attr_u32(FRA_TABLE, ROUTE_TABLE)
        .finish()
}

/// `local 0.0.0.0/0 dev lo table TABLE` (or `::/0`) for `family`.
pub fn route_message(family: Family, lo_index: u32) -> Vec<u8> {
    // struct rtmsg: family, dst_len (0: the default route), src_len, tos,
    // table, protocol, scope, type, then u32 flags.
    let mut hdr = [0u8; 12];
    hdr[0] = af(family);
    hdr[5] = RTPROT_BOOT;
    hdr[6] = RT_SCOPE_HOST;
    hdr[7] = RTN_LOCAL;
    Msg::new(RTM_NEWROUTE, hdr)
        .attr_u32(RTA_TABLE, ROUTE_TABLE)
        .attr_u32(RTA_OIF, lo_index)
        .finish()
}

/// A NETLINK_ROUTE socket, closed on drop.
struct Netlink(std::os::fd::OwnedFd);

impl Netlink {
    fn open() -> io::Result<Netlink> {
        // SAFETY: socket() takes integers and returns a new descriptor or -1.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a descriptor we just opened and own.
        Ok(Netlink(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }))
    }

    /// Sends `msg` and returns the kernel's answer: 0 or a negative errno.
    fn request(&self, msg: &[u8]) -> io::Result<i32> {
        use std::os::fd::AsRawFd;
        // SAFETY: sockaddr_nl is plain data; all-zero is the kernel's address.
        let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `msg` and `to` are valid for the lengths passed.
        let sent = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&raw const to).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: `buf` is valid for writes of its length.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let n = n as usize;
            // nlmsghdr: u32 len, u16 type, u16 flags, u32 seq, u32 pid; an
            // NLMSG_ERROR payload starts with the i32 error (0 is the ack).
            if n >= 20 && u16::from_ne_bytes([buf[4], buf[5]]) == NLMSG_ERROR {
                return Ok(i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]));
            }
            if n == 0 {
                return Err(io::Error::other("netlink closed without an answer"));
            }
        }
    }
}

/// What [`install`] did for one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Installed {
    /// The rule was added (false: it was already there).
    pub rule_added: bool,
    /// The route was added (false: it was already there).
    pub route_added: bool,
}

/// Adds the rule and the local route for `family`; existing ones are kept.
pub fn install(family: Family) -> io::Result<Installed> {
    // SAFETY: the name is a valid NUL-terminated string.
    let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    if lo == 0 {
        return Err(io::Error::other("no loopback interface in this namespace"));
    }
    let nl = Netlink::open()?;
    let added = |what: &str, rc: i32| match -rc {
        0 => Ok(true),
        libc::EEXIST => Ok(false),
        errno => Err(io::Error::new(
            io::Error::from_raw_os_error(errno).kind(),
            format!(
                "adding the {what} for client address preservation ({family:?}): {}",
                io::Error::from_raw_os_error(errno)
            ),
        )),
    };
    let rule_added = added("policy rule", nl.request(&rule_message(family))?)?;
    let route_added = added("local route", nl.request(&route_message(family, lo))?)?;
    Ok(Installed {
        rule_added,
        route_added,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_their_length_kind_and_attributes() {
        let rule = rule_message(Family::V6);
        assert_eq!(rule.len(), 16 + 12 + 4 * 8);
        assert_eq!(
            u32::from_ne_bytes(rule[..4].try_into().unwrap()) as usize,
            rule.len()
        );
        assert_eq!(u16::from_ne_bytes([rule[4], rule[5]]), RTM_NEWRULE);
        assert_eq!(rule[16], libc::AF_INET6 as u8);
        // The last attribute is the table.
        assert_eq!(
            u32::from_ne_bytes(rule[rule.len() - 4..].try_into().unwrap()),
            ROUTE_TABLE
        );
        let route = route_message(Family::V4, 1);
        assert_eq!(u16::from_ne_bytes([route[4], route[5]]), RTM_NEWROUTE);
        assert_eq!(
            &route[16..24],
            &[
                libc::AF_INET as u8,
                0,
                0,
                0,
                0,
                RTPROT_BOOT,
                RT_SCOPE_HOST,
                RTN_LOCAL
            ]
        );
    }

    #[test]
    fn the_plan_names_mark_table_and_both_families() {
        assert_eq!(
            plan(Family::V4),
            [
                "ip rule add fwmark 0x836/0xfff lookup 2102 priority 32000",
                "ip route add local 0.0.0.0/0 dev lo table 2102"
            ]
        );
        assert!(plan(Family::V6)[1].contains("ip -6 route add local ::/0"));
    }
}
