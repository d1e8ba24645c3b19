//! Finding every process a stage started, through `/proc`, so that a cancel ends all of them —
//! also those that left the stage's process group (`setsid`, a daemon's double fork) — and
//! reaping the orphans that reparent to the runner.
//!
//! How a stage's processes stay findable: the stage's leader is made a child subreaper
//! ([`make_subreaper`], inherited across `execve`), so while it lives, whatever its descendants
//! orphan reparents to it and stays in its tree. Once seen, a process is remembered by pid and
//! start time ([`Members`]), so it is still found after its parent died and it reparented to the
//! runner or to PID 1. And when the runner itself is a subreaper ([`become_subreaper`], done by
//! the binary), orphans left behind by a stage's exited leader come to the runner: they are
//! counted in when they were started after the stage's leader.

use std::collections::HashMap;
use std::collections::HashSet;
use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Pids of stage leaders, which their stage's thread reaps (their exit status is the stage's):
/// the orphan reaper must leave them alone. A leader is added under the lock in the same
/// critical section as its spawn, so the reaper cannot take it between fork and insert.
static LEADERS: Mutex<Option<HashSet<libc::pid_t>>> = Mutex::new(None);
/// Whether [`become_subreaper`] was called: only then are the runner's other children orphans
/// of stages (in a test process they may be anything).
static SUBREAPER: AtomicBool = AtomicBool::new(false);

/// While the reaper sees a leader's zombie (its thread is about to reap it), how long to wait.
const LEADER_ZOMBIE_RECHECK: Duration = Duration::from_millis(10);
/// With no child at all, how long the reaper sleeps before looking again.
const NO_CHILD_RECHECK: Duration = Duration::from_millis(500);

fn leaders() -> std::sync::MutexGuard<'static, Option<HashSet<libc::pid_t>>> {
    // A panic elsewhere while holding the lock leaves the set consistent (insert/remove only).
    LEADERS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `spawn` (which forks a stage leader and returns its pid) so that the orphan reaper
/// cannot reap the leader before it is registered; see [`forget_leader`].
pub(crate) fn spawn_leader<T>(spawn: impl FnOnce() -> io::Result<(T, libc::pid_t)>) -> io::Result<T> {
    let mut leaders = leaders();
    let (value, pid) = spawn()?;
    leaders.get_or_insert_with(HashSet::new).insert(pid);
    Ok(value)
}

/// After the stage's thread reaped its leader (or gave it up): orphans with this pid may be
/// reaped again.
pub(crate) fn forget_leader(pid: libc::pid_t) {
    if let Some(set) = leaders().as_mut() {
        set.remove(&pid);
    }
}

/// For `CommandExt::pre_exec`: makes the calling (forked) process a child subreaper. Only a
/// `prctl`, which is async-signal-safe.
pub(crate) fn make_subreaper() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only; no memory is passed.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes this process a child subreaper, so that processes orphaned by a stage reparent to the
/// runner rather than to the container's PID 1 (which may never reap them, e.g. `sleep
/// infinity`), and starts a thread that reaps them. Call once, before serving.
///
/// The process must not have children of its own that it waits for other than the stages the
/// server runs: the reaper takes every exited child that is not a stage leader.
pub fn become_subreaper() -> io::Result<()> {
    make_subreaper()?;
    SUBREAPER.store(true, Ordering::Release);
    std::thread::Builder::new()
        .name("reaper".into())
        .spawn(reap_orphans)
        .map(drop)
}

fn reap_orphans() {
    loop {
        // SAFETY: an all-zero siginfo_t is a valid value for waitid to fill in.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // Wait for any child to exit, but leave it a zombie (WNOWAIT): it may be a leader.
        // SAFETY: `info` is a valid, exclusively borrowed siginfo_t.
        let r = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if r < 0 {
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => {}
                // No child at all (ECHILD), or something unexpected: look again later.
                _ => std::thread::sleep(NO_CHILD_RECHECK),
            }
            continue;
        }
        // SAFETY: waitid succeeded with WEXITED, so si_pid is set.
        let pid = unsafe { info.si_pid() };
        let leaders = leaders();
        if pid == 0 || leaders.as_ref().is_some_and(|set| set.contains(&pid)) {
            // The leader's thread reaps it; its status is the stage's.
            drop(leaders);
            std::thread::sleep(LEADER_ZOMBIE_RECHECK);
            continue;
        }
        let mut status = 0;
        // SAFETY: plain waitpid on a child that is a zombie (so WNOHANG never blocks anyway).
        unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    }
}

/// One process as `/proc/<pid>/stat` shows it.
#[derive(Clone, Copy, Debug)]
struct Proc {
    ppid: libc::pid_t,
    pgrp: libc::pid_t,
    /// Clock ticks after boot: with the pid, a process's identity (pids are reused).
    start: u64,
    /// A zombie (or dead) process: nothing left to signal.
    dead: bool,
}

fn read_proc(pid: libc::pid_t) -> Option<Proc> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parse_stat(stat: &str) -> Option<Proc> {
    // After the command name in parentheses (which may itself hold ')' and spaces):
    // state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt utime stime
    // cutime cstime priority nice num_threads itrealvalue starttime ...
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Proc {
        dead: matches!(*fields.first()?, "Z" | "X" | "x"),
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// Every process in `/proc` right now.
fn snapshot() -> HashMap<libc::pid_t, Proc> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter_map(|pid| Some((pid, read_proc(pid)?)))
        .collect()
}

/// The processes of one stage, as far as `/proc` has shown them: its leader, the leader's
/// descendants, the members of its process group, anything whose parent was a member when it
/// was seen, and (if the runner is a subreaper) the runner's adopted children started after the
/// leader. Never PID 1 or the runner itself.
pub(crate) struct Members {
    leader: libc::pid_t,
    /// The leader's start time: orphans adopted by the runner from before it are not ours.
    leader_start: Option<u64>,
    /// Pid → start time of every process seen as a member.
    known: HashMap<libc::pid_t, u64>,
    /// Whether the leader is not reaped yet. Until then its pid, and so its process group id,
    /// cannot be reused; after, a new process may have it and lead a group of its own (pids
    /// wrap quickly with a small `pid_max`), so the group no longer identifies the stage.
    group_valid: bool,
}

impl Members {
    /// The members of the stage whose leader (and process group id) is `leader`, a child of ours.
    pub(crate) fn new(leader: libc::pid_t) -> Self {
        let leader_start = read_proc(leader).map(|p| p.start);
        let known = leader_start.map(|start| (leader, start)).into_iter().collect();
        Self {
            leader,
            leader_start,
            known,
            group_valid: true,
        }
    }

    /// Call when the leader is about to be reaped (it is a zombie) or just was: takes one more
    /// look, so that what is still in its group is known by pid, then stops trusting the group id.
    pub(crate) fn leader_exited(&mut self) {
        if self.group_valid {
            self.refresh();
            self.group_valid = false;
        }
    }

    /// Looks at `/proc` again; returns the pids of the live members.
    fn refresh(&mut self) -> Vec<libc::pid_t> {
        let procs = snapshot();
        let runner = std::process::id() as libc::pid_t;
        let leaders = leaders().clone().unwrap_or_default();
        let subreaper = SUBREAPER.load(Ordering::Acquire);
        // A known pid is still the same process only if its start time did not change.
        self.known
            .retain(|pid, start| procs.get(pid).is_some_and(|p| p.start == *start));
        loop {
            let before = self.known.len();
            for (&pid, p) in &procs {
                if pid == 1 || pid == runner || self.known.contains_key(&pid) {
                    continue;
                }
                let adopted = subreaper
                    && p.ppid == runner
                    && !leaders.contains(&pid)
                    && self.leader_start.is_some_and(|start| p.start >= start);
                // A child is younger than its parent; a pid reused by an older process is not.
                let child_of_member = self
                    .known
                    .get(&p.ppid)
                    .is_some_and(|&parent_start| p.start >= parent_start);
                let in_group = self.group_valid && p.pgrp == self.leader;
                if in_group || child_of_member || adopted {
                    self.known.insert(pid, p.start);
                }
            }
            if self.known.len() == before {
                break;
            }
        }
        self.known
            .keys()
            .copied()
            .filter(|pid| procs.get(pid).is_some_and(|p| !p.dead))
            .collect()
    }

    /// Sends `signal` to every live member (after looking at `/proc` again) and to the process
    /// group; returns how many members were alive.
    pub(crate) fn signal(&mut self, signal: i32) -> usize {
        let alive = self.refresh();
        if self.group_valid {
            // SAFETY: plain kill(2). The leader is not reaped: its group id is still ours.
            unsafe { libc::kill(-self.leader, signal) };
        }
        for &pid in &alive {
            // SAFETY: plain kill(2). `refresh` checked this pid's start time just now, so it is
            // still the member it was (a reuse in the microseconds since is not guarded against).
            unsafe { libc::kill(pid, signal) };
        }
        alive.len()
    }

    /// Whether no member is alive any more. Zombies do not count: an orphan whose new parent
    /// never reaps it (e.g. `sleep infinity` as the container's PID 1) is dead.
    pub(crate) fn all_gone(&mut self) -> bool {
        self.refresh().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_even_with_odd_command_names() {
        let line = "4242 (a) b (c) S 7 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 0 0";
        let p = parse_stat(line).unwrap();
        assert_eq!((p.ppid, p.pgrp, p.start, p.dead), (7, 4242, 987654, false));
        let zombie = "9 (x) Z 1 9 9 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0";
        assert!(parse_stat(zombie).unwrap().dead);
        assert!(parse_stat("9 (x) S 1").is_none());
    }

    #[test]
    fn this_process_is_found_with_its_parent() {
        let me = read_proc(std::process::id() as libc::pid_t).unwrap();
        // SAFETY: getppid cannot fail.
        assert_eq!(me.ppid, unsafe { libc::getppid() });
        assert!(!me.dead && me.start > 0);
    }
}
