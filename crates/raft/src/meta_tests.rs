//! The metadata state machine on a real RocksDB, without Raft or sockets:
//! the state is stored per key (an apply round writes what it changed),
//! reloads to what was applied, and a snapshot install replaces it whole.

use std::collections::BTreeSet;
use std::sync::Arc;

use ferrolog_metadata::MetaCommand;
use ferrolog_metadata::TopicConfig;
use ferrolog_metadata::groups::Assignor;
use ferrolog_metadata::groups::GroupCommand;
use ferrolog_metadata::groups::Heartbeat;
use ferrolog_storage::Storage;
use ferrolog_storage::StorageConfig;
use openraft::RaftSnapshotBuilder;
use openraft::entry::RaftEntry;
use openraft::storage::RaftStateMachine;

use crate::MetaEntry;
use crate::MetaStateMachine;
use crate::types::alias::MetaLogEntry as Entry;
use crate::types::log_id;

fn store(dir: &tempfile::TempDir) -> Arc<Storage> {
    Arc::new(Storage::open(&StorageConfig::new(dir.path())).expect("open store"))
}

/// Applies `cmds` as one round of entries `next..`.
async fn apply(sm: &mut MetaStateMachine, next: &mut u64, cmds: Vec<MetaCommand>) {
    let entries: Vec<Entry> = cmds
        .into_iter()
        .map(|c| {
            *next += 1;
            Entry::new_normal(log_id(1, 1, *next), MetaEntry(c))
        })
        .collect();
    sm.apply(futures::stream::iter(entries.into_iter().map(|e| Ok((e, None))))).await.expect("apply");
}

fn create(name: &str, partitions: u32) -> MetaCommand {
    MetaCommand::CreateTopic {
        name: name.into(),
        partitions,
        replication_factor: 1,
        config: TopicConfig { max_message_bytes: 1 << 20, ..Default::default() },
        brokers: vec![1],
    }
}

fn commit(group: &str, topic: &str, partitions: std::ops::Range<u32>, offset: i64) -> MetaCommand {
    MetaCommand::Group {
        group: group.into(),
        cmd: GroupCommand::Commit {
            member_id: String::new(),
            member_epoch: -1,
            offsets: partitions.map(|p| ((topic.to_string(), p), offset, format!("m{offset}"))).collect(),
        },
    }
}

fn join(group: &str, member: &str, topic: &str) -> MetaCommand {
    MetaCommand::Group {
        group: group.into(),
        cmd: GroupCommand::Heartbeat(Heartbeat {
            member_id: member.into(),
            member_epoch: 0,
            client_id: "test".into(),
            subscribed: BTreeSet::from([topic.to_string()]),
            owned: BTreeSet::new(),
            assignor: Assignor::Uniform,
            session_timeout_ms: 10_000,
        }),
    }
}

/// Reopens the state machine from the store and requires the same state.
fn assert_reloads(storage: &Arc<Storage>, sm: &MetaStateMachine, when: &str) {
    let reopened = MetaStateMachine::open(storage.clone()).expect("reopen");
    assert_eq!(reopened.state(), sm.state(), "state reloaded from the store differs {when}");
}

#[tokio::test]
async fn the_stored_state_reloads_to_the_applied_one_after_every_kind_of_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = store(&dir);
    let mut sm = MetaStateMachine::open(storage.clone()).expect("open");
    let mut next = 0;
    let rounds: Vec<(&str, Vec<MetaCommand>)> = vec![
        ("topics", vec![create("a", 3), create("b", 2), create("bad name", 1)]),
        (
            "producers",
            vec![
                MetaCommand::InitProducer { name: None },
                MetaCommand::InitProducer { name: Some("orders".into()) },
                MetaCommand::InitProducer { name: Some("orders".into()) },
            ],
        ),
        (
            "standalone commits",
            vec![commit("g1", "a", 0..3, 5), commit("g2", "b", 0..2, 7), commit("g1", "a", 0..1, 2)],
        ),
        ("members", vec![join("g3", "m1", "a"), join("g3", "m2", "a"), join("g1", "x", "a")]),
        ("a refused commit", vec![commit("g3", "a", 0..1, 9), commit("g2", "b", 0..1, -1)]),
        (
            "delete and re-create a group in one round",
            vec![MetaCommand::DeleteGroup { group: "g2".into() }, commit("g2", "a", 2..3, 11)],
        ),
        (
            "members leave",
            vec![MetaCommand::Group {
                group: "g3".into(),
                cmd: GroupCommand::RemoveMembers(vec!["m1".into(), "m2".into()]),
            }],
        ),
        (
            "reset and delete",
            vec![
                MetaCommand::Group {
                    group: "g2".into(),
                    cmd: GroupCommand::ResetOffsets(vec![(("a".into(), 2), 1), (("b".into(), 0), 4)]),
                },
                MetaCommand::DeleteTopic { name: "b".into() },
                MetaCommand::DeleteGroup { group: "g1".into() },
                MetaCommand::Group { group: "g1".into(), cmd: GroupCommand::RemoveMembers(vec!["x".into()]) },
                MetaCommand::DeleteGroup { group: "g1".into() },
            ],
        ),
    ];
    for (what, cmds) in rounds {
        apply(&mut sm, &mut next, cmds).await;
        assert_reloads(&storage, &sm, &format!("after {what}"));
    }
    // The sequence did what it says (so the reload compared real state).
    let s = sm.state();
    assert!(s.cluster.topics.contains_key("a") && !s.cluster.topics.contains_key("b"));
    assert_eq!(s.cluster.named_producers.get("orders"), Some(&(1, 1)));
    assert!(!s.cluster.groups.contains_key("g1"), "deleted group (refused while it had a member)");
    assert!(!s.cluster.groups.contains_key("g3"), "a group without members or offsets is gone");
    let g2 = &s.cluster.groups["g2"];
    // Its reset of b/0 went with topic b (deleting a topic deletes its
    // committed offsets).
    assert_eq!(g2.offsets.len(), 1, "re-created g2 holds only its new offsets of a live topic: {:?}", g2.offsets);
    assert!(!g2.offsets.contains_key(&("b".to_string(), 0)), "offsets of the deleted topic b are gone");
    assert_eq!(g2.offsets[&("a".to_string(), 2)].offset, 1);
    assert_eq!(s.last_applied.map(|l| l.index), Some(next));
}

/// Bytes written by applying one commit of one offset of group `g0`.
async fn commit_cost(sm: &mut MetaStateMachine, view: &crate::meta_sm::MetaView, next: &mut u64, offset: i64) -> u64 {
    let before = view.apply_bytes();
    apply(sm, next, vec![commit("g0", "t", 7..8, offset)]).await;
    view.apply_bytes() - before
}

#[tokio::test]
async fn an_offset_commit_writes_the_same_few_bytes_with_1000_groups_as_with_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = store(&dir);
    let mut sm = MetaStateMachine::open(storage.clone()).expect("open");
    let view = sm.subscribe();
    let mut next = 0;
    apply(&mut sm, &mut next, vec![create("t", 100)]).await;
    apply(&mut sm, &mut next, vec![commit("g0", "t", 0..100, 1)]).await;

    let alone = commit_cost(&mut sm, &view, &mut next, 2).await;
    // 999 more groups of 100 offsets each: ~100,000 offsets in the state.
    for chunk in (1..1000).collect::<Vec<_>>().chunks(100) {
        let cmds = chunk.iter().map(|g| commit(&format!("g{g}"), "t", 0..100, 1)).collect();
        apply(&mut sm, &mut next, cmds).await;
    }
    assert_eq!(sm.state().cluster.groups.len(), 1000);
    let mut placement = sm.subscribe();
    let mut groups = sm.subscribe();
    let among_many = commit_cost(&mut sm, &view, &mut next, 3).await;
    eprintln!("one offset commit writes {alone} bytes with 1 group, {among_many} bytes with 1000");
    assert!(alone < 1024, "a commit wrote {alone} bytes");
    assert!(among_many.abs_diff(alone) <= 16, "{among_many} bytes with 1000 groups vs {alone} with one");
    // A commit signals group readers, not the placement reconciler.
    assert!(tokio::time::timeout(std::time::Duration::ZERO, groups.groups_changed()).await.is_ok());
    assert!(tokio::time::timeout(std::time::Duration::from_millis(50), placement.placement_changed()).await.is_err());
    apply(&mut sm, &mut next, vec![create("u", 1)]).await;
    assert!(tokio::time::timeout(std::time::Duration::ZERO, placement.placement_changed()).await.is_ok());
    assert_reloads(&storage, &sm, "with 1000 groups");
}

#[tokio::test]
async fn a_snapshot_install_replaces_every_stored_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = store(&dir);
    let mut sm = MetaStateMachine::open(storage.clone()).expect("open");
    let mut next = 0;
    apply(&mut sm, &mut next, vec![create("old", 2), commit("old-group", "old", 0..2, 4)]).await;
    apply(&mut sm, &mut next, vec![MetaCommand::InitProducer { name: Some("old-producer".into()) }]).await;

    // Another broker's state, further on.
    let other_dir = tempfile::tempdir().expect("tempdir");
    let mut other = MetaStateMachine::open(store(&other_dir)).expect("open");
    let mut other_next = 10;
    apply(&mut other, &mut other_next, vec![create("new", 1), commit("new-group", "new", 0..1, 9)]).await;
    let snap = other.get_snapshot_builder().await.build_snapshot().await.expect("build snapshot");

    sm.install_snapshot(&snap.meta, snap.snapshot).await.expect("install");
    assert_eq!(sm.state(), other.state());
    assert_reloads(&storage, &sm, "after the install");
    let s = MetaStateMachine::open(storage.clone()).expect("reopen").state();
    assert!(!s.cluster.topics.contains_key("old") && !s.cluster.groups.contains_key("old-group"));
    assert!(s.cluster.named_producers.is_empty());
}
