//! What a worker is called and who and where it runs: the thread name (`PR_SET_NAME`), the
//! CPU affinity, and the credentials it drops to (user and group lookups, `setgroups`,
//! `setgid`, `setuid`, `PR_SET_NO_NEW_PRIVS`).
//!
//! Through rustix (names, affinity, no-new-privs) and nix (the user and group databases,
//! and the credential calls, which glibc applies to every thread of the process).

use std::ffi::{CStr, CString};
use std::io;

use nix::unistd::{Gid, Group, Uid, User};
use rustix::thread::CpuSet;

/// The longest thread name the kernel keeps (16 bytes with the terminating NUL).
const NAME_MAX: usize = 15;

/// `prctl(PR_GET_NAME)`: the calling thread's name (`/proc/self/comm` for the main thread).
pub(crate) fn thread_name() -> io::Result<CString> {
    Ok(rustix::thread::name()?)
}

/// A worker's name, `prefork wK` (cut to 15 bytes), built without allocating. The master
/// builds it before the fork, so that the worker, for which every page it touches is a
/// fault, only passes it to `prctl(PR_SET_NAME)` ([`set_thread_name_c`]).
pub(crate) struct WorkerName([u8; NAME_MAX + 1]);

impl WorkerName {
    pub(crate) fn new(slot: usize) -> WorkerName {
        let mut buf = [0u8; NAME_MAX + 1];
        let prefix = b"prefork w";
        buf[..prefix.len()].copy_from_slice(prefix);
        let mut digits = [0u8; 20];
        let digits = super::decimal(slot as u64, &mut digits);
        let room = NAME_MAX - prefix.len();
        for (at, &d) in (prefix.len()..).zip(digits.iter().take(room)) {
            buf[at] = d;
        }
        WorkerName(buf)
    }

    pub(crate) fn as_c_str(&self) -> &CStr {
        CStr::from_bytes_until_nul(&self.0).expect("the buffer ends with a NUL")
    }
}

/// `prctl(PR_SET_NAME)` with a name as the kernel reported it.
pub(crate) fn set_thread_name_c(name: &CStr) -> io::Result<()> {
    rustix::thread::set_name(name)?;
    Ok(())
}

/// The calling thread renamed for a while: its earlier name comes back on drop.
pub(crate) struct Renamed(Option<CString>);

impl Renamed {
    /// Names the calling thread `name` (the kernel keeps 15 bytes); a failure is logged and
    /// leaves the name as it was.
    pub(crate) fn set(name: &CStr) -> Renamed {
        let before = thread_name().ok();
        match set_thread_name_c(name) {
            Ok(()) => Renamed(before),
            Err(e) => {
                log::debug!("cannot name this process {name:?}: {e}");
                Renamed(None)
            }
        }
    }
}

impl Drop for Renamed {
    fn drop(&mut self) {
        if let Some(name) = &self.0 {
            let _ = set_thread_name_c(name);
        }
    }
}

/// `sched_getaffinity(2)`: the CPUs this process may run on, in ascending order. The kernel
/// already restricts the set to the cgroup's cpuset, so these are the CPUs actually usable,
/// which need not be `0..n`.
pub(crate) fn allowed_cpus() -> io::Result<Vec<usize>> {
    let set = rustix::thread::sched_getaffinity(None)?;
    Ok((0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect())
}

/// `sched_setaffinity(2)` on every thread of this process (the threads listed in
/// `/proc/self/task`, or the calling thread alone when that cannot be read): pins the whole
/// process to `cpu`. Threads started later inherit the setting.
pub(crate) fn pin_process(cpu: usize) -> io::Result<()> {
    if cpu >= CpuSet::MAX_CPU {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut set = CpuSet::new();
    set.set(cpu);
    let tids: Vec<i32> = match std::fs::read_dir("/proc/self/task") {
        Ok(dir) => dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(_) => Vec::new(),
    };
    rustix::thread::sched_setaffinity(None, &set)?;
    // This thread is pinned already; where `gettid` is refused, it is pinned again.
    let me = super::pid::gettid().map(|tid| tid.get() as i32);
    for tid in tids {
        if Some(tid) == me {
            continue;
        }
        let Some(tid) = rustix::process::Pid::from_raw(tid) else {
            continue;
        };
        match rustix::thread::sched_setaffinity(Some(tid), &set) {
            // A thread that ended meanwhile.
            Ok(()) | Err(rustix::io::Errno::SRCH) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The credentials a worker drops to, resolved in the master before any worker starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    /// The user, when one was named: its name and uid.
    pub(crate) user: Option<(String, u32)>,
    /// The group: the named one, else the user's primary group.
    pub(crate) group: (String, u32),
    /// The supplementary groups: the user's groups from the group database (as
    /// `initgroups(3)` sets them), or only the group when no user was named.
    pub(crate) groups: Vec<u32>,
}

/// Why the credentials could not be resolved: the option (`user` or `group`) and the reason.
pub(crate) type Unresolved = (&'static str, String);

/// `getpwnam_r(3)`, `getgrnam_r(3)`, `getgrouplist(3)`: resolves a user and a group name to
/// the credentials a worker drops to. At least one of the two must be given.
pub(crate) fn resolve(user: Option<&str>, group: Option<&str>) -> Result<Credentials, Unresolved> {
    let user = match user {
        None => None,
        Some(name) => match User::from_name(name) {
            Ok(Some(u)) => Some(u),
            Ok(None) => return Err(("user", format!("no user named {name:?} exists"))),
            Err(e) => return Err(("user", format!("cannot look up user {name:?}: {e}"))),
        },
    };
    let group = match (group, &user) {
        (Some(name), _) => match Group::from_name(name) {
            Ok(Some(g)) => (g.name, g.gid.as_raw()),
            Ok(None) => return Err(("group", format!("no group named {name:?} exists"))),
            Err(e) => return Err(("group", format!("cannot look up group {name:?}: {e}"))),
        },
        (None, Some(u)) => {
            let gid = u.gid;
            let name = match Group::from_gid(gid) {
                Ok(Some(g)) => g.name,
                _ => gid.to_string(),
            };
            (name, gid.as_raw())
        }
        (None, None) => {
            return Err(("user", "neither a user nor a group was named".to_owned()));
        }
    };
    let groups = match &user {
        Some(u) => {
            let name = CString::new(u.name.as_bytes())
                .map_err(|_| ("user", format!("user name {:?} holds a NUL byte", u.name)))?;
            let mut list: Vec<u32> = nix::unistd::getgrouplist(&name, Gid::from_raw(group.1))
                .map_err(|e| {
                    (
                        "user",
                        format!("cannot list the groups of {:?}: {e}", u.name),
                    )
                })?
                .into_iter()
                .map(Gid::as_raw)
                .collect();
            list.sort_unstable();
            list.dedup();
            list
        }
        None => vec![group.1],
    };
    Ok(Credentials {
        user: user.map(|u| (u.name, u.uid.as_raw())),
        group,
        groups,
    })
}

/// Which step of [`drop_privileges`] failed, and how.
#[derive(Debug)]
pub(crate) struct DropFailed {
    pub(crate) step: &'static str,
    pub(crate) source: io::Error,
}

impl std::fmt::Display for DropFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.step, self.source)
    }
}

/// `setgroups(2)`, `setgid(2)`, `setuid(2)` in that order, then
/// `prctl(PR_SET_NO_NEW_PRIVS)`, then checks: the real and effective ids are the target
/// ones, and, unless the target user is root, `setuid(0)` fails. Any step that fails is an
/// error; the caller must not serve then. Where the process already has exactly these
/// credentials (a master that is not root, started as the named user) the three calls are
/// skipped, since an unprivileged process may not call `setgroups` at all.
pub(crate) fn drop_privileges(c: &Credentials) -> Result<(), DropFailed> {
    let fail = |step| {
        move |e: nix::Error| DropFailed {
            step,
            source: io::Error::from(e),
        }
    };
    let gid = Gid::from_raw(c.group.1);
    let uid = c.user.as_ref().map(|(_, uid)| Uid::from_raw(*uid));
    if !already(c) {
        let groups: Vec<Gid> = c.groups.iter().map(|&g| Gid::from_raw(g)).collect();
        nix::unistd::setgroups(&groups).map_err(fail("setgroups"))?;
        nix::unistd::setgid(gid).map_err(fail("setgid"))?;
        if let Some(uid) = uid {
            nix::unistd::setuid(uid).map_err(fail("setuid"))?;
        }
    }
    rustix::thread::set_no_new_privs(true).map_err(|e| DropFailed {
        step: "prctl(PR_SET_NO_NEW_PRIVS)",
        source: e.into(),
    })?;
    let check = |ok: bool, what: &'static str| {
        if ok {
            Ok(())
        } else {
            Err(DropFailed {
                step: what,
                source: io::Error::from_raw_os_error(libc::EPERM),
            })
        }
    };
    check(
        nix::unistd::getgid() == gid && nix::unistd::getegid() == gid,
        "checking the group ids",
    )?;
    if let Some(uid) = uid {
        check(
            nix::unistd::getuid() == uid && nix::unistd::geteuid() == uid,
            "checking the user ids",
        )?;
        if !uid.is_root() {
            check(
                nix::unistd::setuid(Uid::from_raw(0)).is_err(),
                "checking that root cannot be regained",
            )?;
        }
    }
    Ok(())
}

/// Whether the process runs with exactly these credentials already.
fn already(c: &Credentials) -> bool {
    let ids_match = nix::unistd::getgid().as_raw() == c.group.1
        && nix::unistd::getegid().as_raw() == c.group.1
        && c.user.as_ref().is_none_or(|(_, uid)| {
            nix::unistd::getuid().as_raw() == *uid && nix::unistd::geteuid().as_raw() == *uid
        });
    if !ids_match {
        return false;
    }
    let mut now: Vec<u32> = match nix::unistd::getgroups() {
        Ok(g) => g.into_iter().map(Gid::as_raw).collect(),
        Err(_) => return false,
    };
    now.sort_unstable();
    now.dedup();
    now == c.groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_names_are_refused_naming_them() {
        let (option, reason) = resolve(Some("no-such-user-prefork"), None).unwrap_err();
        assert_eq!(option, "user");
        assert!(reason.contains("no-such-user-prefork"), "{reason}");
        let (option, reason) = resolve(Some("root"), Some("no-such-group-prefork")).unwrap_err();
        assert_eq!(option, "group");
        assert!(reason.contains("no-such-group-prefork"), "{reason}");
    }

    #[test]
    fn root_resolves_to_uid_and_gid_zero() {
        let c = resolve(Some("root"), None).expect("root exists");
        assert_eq!(c.user, Some(("root".to_owned(), 0)));
        assert_eq!(c.group.1, 0);
        assert!(c.groups.contains(&0), "{:?}", c.groups);
    }

    #[test]
    fn a_group_alone_is_the_only_group() {
        let c = resolve(None, Some("root")).expect("group root exists");
        assert_eq!(c.user, None);
        assert_eq!(c.groups, vec![0]);
    }

    #[test]
    fn names_are_cut_to_fifteen_bytes() {
        let before = thread_name().expect("PR_GET_NAME");
        set_thread_name_c(c"prefork w1234567890").expect("PR_SET_NAME");
        let name = thread_name().expect("PR_GET_NAME");
        set_thread_name_c(&before).expect("PR_SET_NAME");
        assert_eq!(name.to_bytes(), b"prefork w123456");
    }

    #[test]
    fn worker_names_are_built_without_allocating_and_cut_alike() {
        let before = thread_name().expect("PR_GET_NAME");
        let mut seen = Vec::new();
        for slot in [0, 7, 42, 1234567890] {
            set_thread_name_c(WorkerName::new(slot).as_c_str()).expect("PR_SET_NAME");
            seen.push(thread_name().expect("PR_GET_NAME"));
        }
        set_thread_name_c(&before).expect("PR_SET_NAME");
        let seen: Vec<&[u8]> = seen.iter().map(|n| n.to_bytes()).collect();
        let want: [&[u8]; 4] = [
            b"prefork w0",
            b"prefork w7",
            b"prefork w42",
            b"prefork w123456",
        ];
        assert_eq!(seen, want);
    }

    #[test]
    fn the_allowed_cpus_are_listed_in_ascending_order() {
        let cpus = allowed_cpus().expect("sched_getaffinity");
        assert!(!cpus.is_empty());
        assert!(cpus.windows(2).all(|w| w[0] < w[1]), "{cpus:?}");
    }
}
