//! The proxy's privileges: never serve traffic as root, and hold at most one
//! capability, `CAP_NET_RAW`, and only when client address preservation needs it.
//!
//! Preserving the client's address means setting `IP_TRANSPARENT` on a socket
//! for every inbound connection, and the kernel checks `CAP_NET_RAW` (or
//! `CAP_NET_ADMIN`) at each of those `setsockopt` calls. Kubernetes cannot hand a
//! capability to a non-root process across `execve` (it sets no ambient
//! capabilities, and `allowPrivilegeEscalation: false` rules out file
//! capabilities beyond what the caller already holds), so the injector starts
//! the proxy container as UID 0 with exactly `NET_RAW`, `SETUID` and `SETGID`,
//! and [`settle`] does the rest inside the process, before any thread, socket or
//! input exists:
//!
//! 1. `PR_SET_KEEPCAPS`, then `setgroups([])`, `setresgid` and `setresuid` to the
//!    proxy UID (2102, which the iptables rules exempt);
//! 2. `capset`: permitted and effective become `{CAP_NET_RAW}` (or nothing when
//!    preservation is off), inheritable nothing; ambient is cleared;
//! 3. `PR_SET_NO_NEW_PRIVS`, so no later `execve` can gain anything;
//! 4. the result is read back (`getresuid`, `getresgid`, `capget`) and anything
//!    but the expected state stops the proxy.
//!
//! `SETUID` and `SETGID` stay in the bounding set (dropping them needs
//! `CAP_SETPCAP`, which the container does not get), but no set the process can
//! use holds them after step 2, and they cannot be regained without an
//! `execve` of a privileged binary, which `no_new_privs` forbids.
//!
//! A proxy started as a non-root user keeps whatever it was given; started as
//! root it always switches, and refuses to start if it cannot.

use std::io;

/// `CAP_NET_RAW` (linux/capability.h): enough for `IP_TRANSPARENT`.
pub const CAP_NET_RAW: u32 = 13;
/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAP_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The process's capability sets, as 64-bit masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Caps {
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
}

impl Caps {
    pub fn has_effective(&self, cap: u32) -> bool {
        self.effective & (1 << cap) != 0
    }
}

/// The capability sets of the calling thread.
pub fn current_caps() -> io::Result<Caps> {
    let mut hdr = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two CapData words for version 3, which `data` holds.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &raw mut hdr, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    Ok(Caps {
        effective: join(data[0].effective, data[1].effective),
        permitted: join(data[0].permitted, data[1].permitted),
        inheritable: join(data[0].inheritable, data[1].inheritable),
    })
}

fn set_caps(caps: Caps) -> io::Result<()> {
    let mut hdr = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let split = |m: u64| (m as u32, (m >> 32) as u32);
    let (e0, e1) = split(caps.effective);
    let (p0, p1) = split(caps.permitted);
    let (i0, i1) = split(caps.inheritable);
    let data = [
        CapData {
            effective: e0,
            permitted: p0,
            inheritable: i0,
        },
        CapData {
            effective: e1,
            permitted: p1,
            inheritable: i1,
        },
    ];
    // SAFETY: capset reads the header and two CapData words, both valid here.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &raw mut hdr, data.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Why the proxy refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum PrivError {
    #[error(
        "started as root, and switching to UID {uid} failed at {step}: {source}; the proxy never \
         serves traffic as root (the container needs SETUID and SETGID to switch, or run it as \
         UID {uid})"
    )]
    Switch {
        uid: u32,
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("after switching to UID {uid}: {what}; refusing to start")]
    Verify { uid: u32, what: String },
}

/// What [`settle`] did, for the start-up log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    /// The process started as root and switched to the proxy UID.
    pub switched: bool,
    /// `CAP_NET_RAW` is effective now.
    pub net_raw: bool,
}

fn check(rc: libc::c_int, uid: u32, step: &'static str) -> Result<(), PrivError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(PrivError::Switch {
            uid,
            step,
            source: io::Error::last_os_error(),
        })
    }
}

/// The effective user ID.
pub fn euid() -> u32 {
    resuid().1
}

fn resuid() -> (u32, u32, u32) {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: getresuid only writes the three integers it is given.
    unsafe { libc::getresuid(&mut r, &mut e, &mut s) };
    (r, e, s)
}

fn resgid() -> (u32, u32, u32) {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: getresgid only writes the three integers it is given.
    unsafe { libc::getresgid(&mut r, &mut e, &mut s) };
    (r, e, s)
}

/// Settles the process's privileges as the module doc says: as root, switch to
/// `uid` keeping `CAP_NET_RAW` only if `keep_net_raw`; otherwise leave them.
///
/// Must run before the process starts any thread: `capset` changes only the
/// calling thread.
pub fn settle(uid: u32, keep_net_raw: bool) -> Result<Settled, PrivError> {
    let (r, e, s) = resuid();
    if r != 0 && e != 0 && s != 0 {
        let net_raw = current_caps().is_ok_and(|c| c.has_effective(CAP_NET_RAW));
        return Ok(Settled {
            switched: false,
            net_raw,
        });
    }
    let before = current_caps().map_err(|source| PrivError::Switch {
        uid,
        step: "capget",
        source,
    })?;
    let net_raw_bit = 1u64 << CAP_NET_RAW;
    let keep = if keep_net_raw && before.permitted & net_raw_bit != 0 {
        net_raw_bit
    } else {
        0
    };
    // SAFETY (all calls below): plain system calls on this process's own
    // credentials, with integer arguments or a null list of length zero.
    check(
        unsafe {
            libc::prctl(
                libc::PR_SET_KEEPCAPS,
                libc::c_ulong::from(keep != 0),
                0,
                0,
                0,
            )
        },
        uid,
        "prctl(PR_SET_KEEPCAPS)",
    )?;
    check(
        unsafe { libc::setgroups(0, std::ptr::null()) },
        uid,
        "setgroups",
    )?;
    check(unsafe { libc::setresgid(uid, uid, uid) }, uid, "setresgid")?;
    check(unsafe { libc::setresuid(uid, uid, uid) }, uid, "setresuid")?;
    set_caps(Caps {
        effective: keep,
        permitted: keep,
        inheritable: 0,
    })
    .map_err(|source| PrivError::Switch {
        uid,
        step: "capset",
        source,
    })?;
    // SAFETY: as above.
    unsafe {
        libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0);
        // Ambient capabilities are empty under Kubernetes; clear them anyway.
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        );
    }
    check(
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) },
        uid,
        "prctl(PR_SET_NO_NEW_PRIVS)",
    )?;

    let verify = |what: String| PrivError::Verify { uid, what };
    if resuid() != (uid, uid, uid) {
        return Err(verify(format!("user IDs are {:?}", resuid())));
    }
    if resgid() != (uid, uid, uid) {
        return Err(verify(format!("group IDs are {:?}", resgid())));
    }
    let after = current_caps().map_err(|e| verify(format!("capget: {e}")))?;
    if after.permitted & !keep != 0 || after.effective != keep || after.inheritable != 0 {
        return Err(verify(format!("capabilities are {after:?}")));
    }
    Ok(Settled {
        switched: true,
        net_raw: keep != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capget_reads_this_process() {
        // Whatever the test runs as, the call works and effective ⊆ permitted.
        let caps = current_caps().unwrap();
        assert_eq!(caps.effective & !caps.permitted, 0);
    }
}
