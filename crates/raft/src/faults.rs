//! Injected log-read failures, for tests of what a broker does when one
//! group's Raft core stops (a corrupt value read back, a storage bug) while
//! the broker itself keeps running. Armed only by the broker's failpoints
//! (`raft.fail_led_log_reads_on_sigusr1`, debug test builds); a store
//! without an armed group pays one relaxed atomic load per log read.

use std::collections::BTreeSet;
use std::io;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;

use ferrolog_types::GroupId;

static ARMED: AtomicBool = AtomicBool::new(false);
static FAILING: Mutex<BTreeSet<GroupId>> = Mutex::new(BTreeSet::new());

/// From now on, every read of `group`'s Raft log in this process fails
/// with an I/O error, as a corrupt value would.
pub fn fail_log_reads_of(group: GroupId) {
    FAILING.lock().expect("faults lock").insert(group);
    ARMED.store(true, Ordering::Release);
}

/// The injected failure for a read of `group`'s log, if one is armed.
pub(crate) fn check_log_read(group: GroupId) -> io::Result<()> {
    if ARMED.load(Ordering::Relaxed) && FAILING.lock().expect("faults lock").contains(&group) {
        return Err(io::Error::other(format!("injected log read failure of group {group} (failpoint)")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_armed_group_fails() {
        check_log_read(GroupId(u64::MAX - 7)).expect("nothing armed");
        fail_log_reads_of(GroupId(u64::MAX - 7));
        assert!(check_log_read(GroupId(u64::MAX - 7)).is_err());
        check_log_read(GroupId(u64::MAX - 8)).expect("another group reads");
    }
}
