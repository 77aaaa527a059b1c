//! The consumer: [`Consumer::subscribe`] joins a consumer group (server-side
//! assignment, KIP-848 style); [`Consumer::assign`] reads given partitions
//! without a group. Either way [`Consumer::next`] yields [`Event`]s: records
//! in partition order, and partitions assigned or revoked.
//!
//! Delivery is at least once: a record's position counts as consumed only
//! once [`Consumer::next`] returned it, and commits (automatic on an
//! interval, on revocation and on close, or [`Consumer::commit`]) store
//! those positions. Records of a partition that was revoked but still sat in
//! the buffer are dropped, never handed out after the `Revoked` event: the
//! new owner reads them again from the committed offset.
//!
//! One background task owns the membership: it heartbeats, reports what
//! this member owns, starts a fetch task per newly assigned partition (from
//! the committed offset, or per [`OffsetReset`]) and stops it on
//! revocation; it reports the partition released only once the
//! application has taken the `Revoked` event from [`Consumer::next`] (so it
//! is done with every record it had of it), or a session timeout later if
//! the application stops calling it. So no two members of a group ever
//! consume one partition at once.

use ferrolog_types::limits::API_MESSAGE_LIMIT;
use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use crate::Client;
use crate::ClientError;
use crate::ErrorKind;
use crate::FetchedRecord;
use ferrolog_proto::v1;
use ferrolog_proto::v1::groups_client::GroupsClient;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A topic partition.
pub type Tp = (String, u32);

/// Events buffered ahead of the application; fetchers wait when it is full.
pub const EVENT_QUEUE: usize = 1_024;
/// Commands (commit, seek, pause, ...) queued to the member task.
const COMMAND_QUEUE: usize = 64;
/// Long-poll wait of one fetch.
const FETCH_WAIT: Duration = Duration::from_millis(500);
/// Timeout of one coordinator call (it follows the metadata leader).
const COORDINATOR_TIMEOUT: Duration = Duration::from_secs(10);

/// Where to start a partition with no committed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetReset {
    /// The log start.
    Earliest,
    /// The end (only new records).
    Latest,
}

/// How a group spreads partitions over its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Assignor {
    /// Sticky round-robin over every subscribed partition.
    #[default]
    Uniform,
    /// Kafka's range assignor, per topic.
    Range,
}

impl Assignor {
    fn to_proto(self) -> v1::Assignor {
        match self {
            Assignor::Uniform => v1::Assignor::Uniform,
            Assignor::Range => v1::Assignor::Range,
        }
    }
}

/// Consumer settings.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Label sent to the coordinator.
    pub client_id: String,
    /// Session timeout: the member is removed if it does not heartbeat for
    /// this long.
    pub session_timeout: Duration,
    /// Commit consumed positions on this interval (None: only manual commits).
    pub auto_commit: Option<Duration>,
    /// Start of partitions without a committed offset.
    pub offset_reset: OffsetReset,
    /// `uniform` (default) or `range`.
    pub assignor: Assignor,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            client_id: "ferrolog-consumer".into(),
            session_timeout: Duration::from_secs(45),
            auto_commit: Some(Duration::from_secs(5)),
            offset_reset: OffsetReset::Latest,
            assignor: Assignor::Uniform,
        }
    }
}

/// A consumed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// The record.
    pub record: FetchedRecord,
}

/// What [`Consumer::next`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A record.
    Record(ConsumedRecord),
    /// These partitions are now this consumer's.
    Assigned(Vec<Tp>),
    /// These partitions are no longer this consumer's (their positions were
    /// committed first when auto-commit is on).
    Revoked(Vec<Tp>),
    /// The committed offsets of these owned partitions could not be fetched
    /// for [`OFFSETS_ERROR_AFTER`]: they are not consumed (never from the
    /// reset policy, which would skip or repeat records and let auto-commit
    /// persist the jump) and the consumer keeps asking; records follow once
    /// an answer comes. Told once per stretch of failures.
    OffsetsUnavailable {
        /// The partitions waiting for their committed offsets.
        partitions: Vec<Tp>,
        /// The last error.
        error: String,
    },
}

/// How long fetching committed offsets may fail before the application is
/// told ([`Event::OffsetsUnavailable`]); the consumer keeps trying after.
pub const OFFSETS_ERROR_AFTER: Duration = COORDINATOR_TIMEOUT;

/// Pause between attempts to fetch committed offsets that failed.
const OFFSETS_RETRY: Duration = Duration::from_millis(500);

/// The budget of one such attempt (the first one gets
/// `COORDINATOR_TIMEOUT`): short, so the member loop keeps heartbeating and
/// tells the application on time.
const OFFSETS_RETRY_CALL: Duration = Duration::from_secs(2);

enum Cmd {
    Commit(tokio::sync::oneshot::Sender<Result<(), ClientError>>),
    Seek(Tp, u64),
    Pause(Tp, bool),
    Close(tokio::sync::oneshot::Sender<Result<(), ClientError>>),
}

/// State shared between the application side and the member task.
#[derive(Debug, Default)]
struct Shared {
    /// Partitions owned now.
    owned: BTreeSet<Tp>,
    /// Next offset to hand out per owned partition (consumed position).
    positions: HashMap<Tp, u64>,
    /// Fetcher generation per partition: records of an older fetcher (before
    /// a seek, a revocation or a re-assignment) are dropped.
    generations: HashMap<Tp, u64>,
    next_generation: u64,
    /// Assigned/revoked events not yet returned by [`Consumer::next`]. The
    /// member task must never wait for the application (it would miss
    /// heartbeats), so these do not go through the bounded record queue;
    /// at most [`MAX_PENDING_EVENTS`] are kept (oldest dropped, logged).
    pending: std::collections::VecDeque<Event>,
    /// Events pushed to / taken from `pending` (dropped ones count as taken).
    pushed: u64,
    taken: u64,
    /// Revoked partitions the application has not yet been told of: the
    /// heartbeat keeps reporting them as owned until [`Consumer::next`]
    /// returned the `Revoked` event (sequence number) or the deadline passed,
    /// so the coordinator hands them to another member only once this
    /// application finished with the records it already had (as Kafka waits
    /// for `onPartitionsRevoked`).
    revoking: Vec<(BTreeSet<Tp>, u64, Instant)>,
}

/// A member gives its partitions up when no heartbeat got through for this
/// fraction of its session timeout (the rest is margin for scheduling).
const SELF_FENCE_FRACTION: f64 = 0.7;

/// How soon the heartbeat reports revoked partitions once the application
/// has seen them revoked.
const REVOKE_REPORT_INTERVAL: Duration = Duration::from_millis(50);

/// Bound of the pending assigned/revoked events.
const MAX_PENDING_EVENTS: usize = 4_096;

/// What travels from fetchers to [`Consumer::next`]: records tagged with
/// their fetcher's generation, or a wake-up for pending events.
#[derive(Debug)]
enum Item {
    Record(u64, ConsumedRecord),
    Wake,
}

/// A consumer (see the module docs).
#[derive(Debug)]
pub struct Consumer {
    events: mpsc::Receiver<Item>,
    cmds: mpsc::Sender<Cmd>,
    shared: Arc<Mutex<Shared>>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cmd::Commit(_) => "Commit",
            Cmd::Seek(..) => "Seek",
            Cmd::Pause(..) => "Pause",
            Cmd::Close(_) => "Close",
        })
    }
}

impl Consumer {
    /// Joins `group`, subscribed to `topics`.
    pub fn subscribe(client: Arc<Client>, group: &str, topics: &[&str], config: ConsumerConfig) -> Consumer {
        let member = Member {
            client,
            group: Some(group.to_string()),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            config,
            member_id: String::new(),
            epoch: 0,
            fetchers: HashMap::new(),
            paused: BTreeSet::new(),
            last_ok_sent: None,
            awaiting: BTreeMap::new(),
            awaiting_told: false,
            awaiting_error: String::new(),
        };
        Self::start(member, BTreeMap::new())
    }

    /// Reads `partitions` from the given offsets (None: per `config.offset_reset`),
    /// without a group.
    pub fn assign(client: Arc<Client>, partitions: BTreeMap<Tp, Option<u64>>, config: ConsumerConfig) -> Consumer {
        let member = Member {
            client,
            group: None,
            topics: Vec::new(),
            config,
            member_id: String::new(),
            epoch: -1,
            fetchers: HashMap::new(),
            paused: BTreeSet::new(),
            last_ok_sent: None,
            awaiting: BTreeMap::new(),
            awaiting_told: false,
            awaiting_error: String::new(),
        };
        Self::start(member, partitions)
    }

    fn start(member: Member, fixed: BTreeMap<Tp, Option<u64>>) -> Consumer {
        let (tx, events) = mpsc::channel(EVENT_QUEUE);
        let (cmds, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let shared = Arc::new(Mutex::new(Shared::default()));
        let task = tokio::spawn(member.run(tx, cmd_rx, shared.clone(), fixed));
        Consumer { events, cmds, shared, task }
    }

    /// The next event; `None` once the consumer is closed.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            {
                let mut s = self.shared.lock().expect("consumer state lock");
                if let Some(e) = s.pending.pop_front() {
                    s.taken += 1;
                    return Some(e);
                }
            }
            match self.events.recv().await? {
                Item::Wake => continue,
                Item::Record(generation, r) => {
                    let tp = (r.topic.clone(), r.partition);
                    let mut s = self.shared.lock().expect("consumer state lock");
                    // A record of a partition revoked (or re-positioned by a
                    // seek) since it was fetched is not handed out.
                    if !s.owned.contains(&tp) || s.generations.get(&tp) != Some(&generation) {
                        continue;
                    }
                    s.positions.insert(tp, r.record.offset + 1);
                    return Some(Event::Record(r));
                }
            }
        }
    }

    /// Commits the positions of everything [`Consumer::next`] returned.
    pub async fn commit(&self) -> Result<(), ClientError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.cmds.send(Cmd::Commit(tx)).await.map_err(|_| ClientError::closed("consumer"))?;
        rx.await.map_err(|_| ClientError::closed("consumer"))?
    }

    /// Continues `tp` from `offset`.
    pub async fn seek(&self, tp: Tp, offset: u64) {
        let _ = self.cmds.send(Cmd::Seek(tp, offset)).await;
    }

    /// Stops fetching `tp` until [`Consumer::resume`].
    pub async fn pause(&self, tp: Tp) {
        let _ = self.cmds.send(Cmd::Pause(tp, true)).await;
    }

    /// Fetches `tp` again.
    pub async fn resume(&self, tp: Tp) {
        let _ = self.cmds.send(Cmd::Pause(tp, false)).await;
    }

    /// Partitions owned now.
    pub fn assignment(&self) -> BTreeSet<Tp> {
        self.shared.lock().expect("consumer state lock").owned.clone()
    }

    /// Commits (with auto-commit on) and leaves the group at once.
    pub async fn close(self) -> Result<(), ClientError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.cmds.send(Cmd::Close(tx)).await.is_err() {
            return Ok(());
        }
        // The member task answers after leaving, then ends.
        rx.await.unwrap_or(Ok(()))
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        // Without close(): stop everything (no leave; the session expires).
        self.task.abort();
    }
}

struct Member {
    client: Arc<Client>,
    group: Option<String>,
    topics: Vec<String>,
    config: ConsumerConfig,
    member_id: String,
    epoch: i32,
    fetchers: HashMap<Tp, JoinHandle<()>>,
    paused: BTreeSet<Tp>,
    /// When the last heartbeat that succeeded was sent: the coordinator
    /// saw this member alive no earlier than that (see `self_fence_at`).
    last_ok_sent: Option<Instant>,
    /// Owned partitions whose committed offsets could not be fetched yet,
    /// and since when; none of them is consumed or committed until known.
    awaiting: BTreeMap<Tp, Instant>,
    /// Whether the application was told of the current stretch of failures.
    awaiting_told: bool,
    /// The last error fetching them.
    awaiting_error: String,
}

impl Drop for Member {
    fn drop(&mut self) {
        for (_, f) in self.fetchers.drain() {
            f.abort();
        }
    }
}

/// Queues an assigned/revoked event without waiting for the application;
/// returns its sequence number.
fn push_event(shared: &Arc<Mutex<Shared>>, tx: &mpsc::Sender<Item>, e: Event) -> u64 {
    let seq = {
        let mut s = shared.lock().expect("consumer state lock");
        if s.pending.len() >= MAX_PENDING_EVENTS {
            tracing::warn!("consumer events not read by the application: dropping the oldest");
            s.pending.pop_front();
            s.taken += 1;
        }
        s.pending.push_back(e);
        s.pushed += 1;
        s.pushed
    };
    // A full queue means next() will run soon anyway and see the event.
    let _ = tx.try_send(Item::Wake);
    seq
}

/// What the heartbeat reports as owned: the owned partitions plus those
/// revoked but not yet seen revoked by the application (see
/// `Shared::revoking`). Forgets revocations the application has seen.
fn reported_owned(shared: &Arc<Mutex<Shared>>) -> BTreeSet<Tp> {
    let mut s = shared.lock().expect("consumer state lock");
    let taken = s.taken;
    let now = Instant::now();
    s.revoking.retain(|(_, seq, deadline)| taken < *seq && now < *deadline);
    let mut out = s.owned.clone();
    for (set, _, _) in &s.revoking {
        out.extend(set.iter().cloned());
    }
    out
}

/// Log start and end (high watermark) of a partition, from its leader.
async fn range_of(client: &Client, topic: &str, partition: u32) -> Option<(u64, u64)> {
    let d = client.wait_leaders(topic, COORDINATOR_TIMEOUT).await.ok()?;
    let p = d.partitions.get(partition as usize)?;
    Some((p.log_start.unwrap_or(0), p.high_watermark.unwrap_or(0)))
}

fn tps(list: &[v1::TopicPartitions]) -> BTreeSet<Tp> {
    ferrolog_proto::partitions::from_proto(list)
}

fn to_proto(set: &BTreeSet<Tp>) -> Vec<v1::TopicPartitions> {
    ferrolog_proto::partitions::to_proto(set)
}

impl Member {
    async fn run(
        mut self,
        tx: mpsc::Sender<Item>,
        mut cmds: mpsc::Receiver<Cmd>,
        shared: Arc<Mutex<Shared>>,
        fixed: BTreeMap<Tp, Option<u64>>,
    ) {
        if self.group.is_none() {
            let set: BTreeSet<Tp> = fixed.keys().cloned().collect();
            self.take(&set, &fixed, &tx, &shared).await;
        }
        let mut next_heartbeat = Instant::now();
        let mut next_commit = self.config.auto_commit.map(|d| Instant::now() + d);
        let mut next_offsets = Instant::now() + OFFSETS_RETRY;
        loop {
            let offsets_retry = Some(next_offsets).filter(|_| !self.awaiting.is_empty());
            let wake = [Some(next_heartbeat).filter(|_| self.group.is_some()), next_commit, offsets_retry]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    None => return,
                    Some(Cmd::Commit(reply)) => { let _ = reply.send(self.commit(&shared, None).await); }
                    Some(Cmd::Seek(tp, offset)) => {
                        if shared.lock().expect("consumer state lock").owned.contains(&tp) {
                            // A position from the application: no need for
                            // the committed one any more.
                            self.awaiting.remove(&tp);
                            self.stop_fetcher(&tp);
                            shared.lock().expect("consumer state lock").positions.insert(tp.clone(), offset);
                            self.start_fetcher(tp, offset, &tx, &shared);
                        }
                    }
                    Some(Cmd::Pause(tp, on)) => {
                        let owned = shared.lock().expect("consumer state lock").owned.contains(&tp);
                        if on {
                            self.paused.insert(tp.clone());
                            self.stop_fetcher(&tp);
                        } else if self.paused.remove(&tp) && owned {
                            // Not while its position is unknown (awaiting
                            // its committed offset): it starts once known.
                            let pos = shared.lock().expect("consumer state lock").positions.get(&tp).copied();
                            if let Some(pos) = pos {
                                self.start_fetcher(tp, pos, &tx, &shared);
                            }
                        }
                    }
                    Some(Cmd::Close(reply)) => {
                        let r = if self.config.auto_commit.is_some() { self.commit(&shared, None).await } else { Ok(()) };
                        self.leave().await;
                        let _ = reply.send(r);
                        return;
                    }
                },
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
            let now = Instant::now();
            if offsets_retry.is_some_and(|t| now >= t) {
                self.retry_awaiting(&tx, &shared).await;
                next_offsets = Instant::now() + OFFSETS_RETRY;
            }
            if self.awaiting.is_empty() {
                // Fetched, revoked, sought or fenced: a later stretch of
                // failures is told again.
                self.awaiting_told = false;
            }
            if next_commit.is_some_and(|t| now >= t) {
                if let Err(e) = self.commit(&shared, None).await {
                    tracing::warn!(error = %e, "auto-commit failed");
                }
                next_commit = self.config.auto_commit.map(|d| now + d);
            }
            if self.group.is_some() && now >= next_heartbeat {
                let interval = self.heartbeat(&tx, &shared).await;
                next_heartbeat = Instant::now() + interval;
            }
        }
    }

    async fn heartbeat(&mut self, tx: &mpsc::Sender<Item>, shared: &Arc<Mutex<Shared>>) -> Duration {
        let Some(group) = self.group.clone() else { return Duration::from_secs(3600) };
        let owned = shared.lock().expect("consumer state lock").owned.clone();
        let reported = reported_owned(shared);
        let req = v1::HeartbeatRequest {
            group: group.clone(),
            member_id: self.member_id.clone(),
            member_epoch: self.epoch,
            subscribed_topics: self.topics.clone(),
            owned: to_proto(&reported),
            assignor: self.config.assignor.to_proto() as i32,
            session_timeout_ms: self.config.session_timeout.as_millis() as u32,
            client_id: self.config.client_id.clone(),
        };
        let sent = Instant::now();
        let call = self.client.on_meta_leader("group", COORDINATOR_TIMEOUT, |ch| {
            let req = req.clone();
            async move { GroupsClient::new(ch).max_decoding_message_size(API_MESSAGE_LIMIT).heartbeat(req).await }
        });
        // Self-fencing: a coordinator expires a member a session timeout
        // after it last heard from it, which is no earlier than when the
        // last successful heartbeat was sent. A member that cannot get a
        // heartbeat through stops consuming before that can happen, so a
        // partition handed to another member after an expiry never has two
        // consumers (Kafka's clients leave this window open).
        let fence_at = self.fence_at();
        let r = match fence_at {
            Some(at) => match tokio::time::timeout_at(at.into(), call).await {
                Ok(r) => r,
                Err(_) => {
                    self.self_fence(group.as_str(), &owned, tx, shared).await;
                    return Duration::ZERO;
                }
            },
            None => call.await,
        };
        let retry = (self.config.session_timeout / 10).max(Duration::from_millis(100));
        match r {
            Ok(resp) => {
                self.last_ok_sent = Some(sent);
                self.member_id = resp.member_id;
                self.epoch = resp.member_epoch;
                if let Some(a) = resp.assignment {
                    let target = tps(&a.partitions);
                    let revoked: BTreeSet<Tp> = owned.difference(&target).cloned().collect();
                    let added: BTreeSet<Tp> = target.difference(&owned).cloned().collect();
                    if !revoked.is_empty() {
                        let seq = self.release(&revoked, tx, shared, true).await;
                        let deadline = Instant::now() + self.config.session_timeout;
                        shared.lock().expect("consumer state lock").revoking.push((revoked.clone(), seq, deadline));
                    }
                    if !added.is_empty() {
                        self.take(&added, &BTreeMap::new(), tx, shared).await;
                    }
                    if !revoked.is_empty() {
                        // Report the release soon rather than a full interval
                        // later (once the application has seen it).
                        return REVOKE_REPORT_INTERVAL;
                    }
                }
                if !shared.lock().expect("consumer state lock").revoking.is_empty() {
                    return REVOKE_REPORT_INTERVAL;
                }
                Duration::from_millis(resp.heartbeat_interval_ms.max(100).into())
            }
            Err(s) if s.kind() == ErrorKind::StaleMemberEpoch => {
                // Fenced (session expired, or epoch out of date): give every
                // partition up without committing, and join again.
                tracing::warn!(group, error = %s.message(), "member fenced: rejoining");
                // Fenced: the coordinator no longer counts this member, so
                // nothing is waited for.
                self.release(&owned, tx, shared, false).await;
                shared.lock().expect("consumer state lock").revoking.clear();
                self.member_id.clear();
                self.epoch = 0;
                self.last_ok_sent = None;
                Duration::ZERO
            }
            Err(s) => {
                tracing::warn!(group, error = %s.message(), "heartbeat failed; retrying");
                if fence_at.is_some_and(|at| Instant::now() + retry >= at) {
                    self.self_fence(group.as_str(), &owned, tx, shared).await;
                    return Duration::ZERO;
                }
                retry
            }
        }
    }

    /// Gives every partition up without committing and joins afresh: the
    /// coordinator may already count this member as expired.
    async fn self_fence(
        &mut self,
        group: &str,
        owned: &BTreeSet<Tp>,
        tx: &mpsc::Sender<Item>,
        shared: &Arc<Mutex<Shared>>,
    ) {
        tracing::warn!(
            group,
            "no heartbeat got through for most of the session timeout: giving up every partition and rejoining"
        );
        self.release(owned, tx, shared, false).await;
        shared.lock().expect("consumer state lock").revoking.clear();
        self.member_id.clear();
        self.epoch = 0;
        self.last_ok_sent = None;
    }

    /// Stops consuming `set` (committing first when asked and auto-commit is
    /// on); returns the sequence number of the `Revoked` event.
    async fn release(
        &mut self,
        set: &BTreeSet<Tp>,
        tx: &mpsc::Sender<Item>,
        shared: &Arc<Mutex<Shared>>,
        commit: bool,
    ) -> u64 {
        for tp in set {
            self.stop_fetcher(tp);
        }
        if commit
            && self.config.auto_commit.is_some()
            && let Err(e) = self.commit(shared, Some(set)).await
        {
            tracing::warn!(error = %e, "commit on revocation failed");
        }
        {
            let mut s = shared.lock().expect("consumer state lock");
            for tp in set {
                s.owned.remove(tp);
                s.positions.remove(tp);
            }
        }
        for tp in set {
            self.awaiting.remove(tp);
        }
        push_event(shared, tx, Event::Revoked(set.iter().cloned().collect()))
    }

    /// Starts consuming `set`, each from `start` if given, else from the
    /// committed offset, else per the reset policy. When the committed
    /// offsets cannot be fetched, the partitions without a given start are
    /// owned but wait for them (see [`Member::retry_awaiting`]): the reset
    /// policy is for partitions that have no committed offset, not for a
    /// coordinator that did not answer.
    async fn take(
        &mut self,
        set: &BTreeSet<Tp>,
        start: &BTreeMap<Tp, Option<u64>>,
        tx: &mpsc::Sender<Item>,
        shared: &Arc<Mutex<Shared>>,
    ) {
        let unknown: BTreeSet<Tp> =
            set.iter().filter(|tp| start.get(*tp).copied().flatten().is_none()).cloned().collect();
        // Since when they have waited: from the first attempt, not its end.
        let asked = Instant::now();
        let committed = if unknown.is_empty() {
            Some(HashMap::new())
        } else {
            match self.committed(&unknown, COORDINATOR_TIMEOUT).await {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "fetching committed offsets failed; retrying (not using the reset policy)");
                    self.awaiting_error = e.to_string();
                    None
                }
            }
        };
        let mut starts = Vec::new();
        for tp in set {
            let offset = match (start.get(tp).copied().flatten(), &committed) {
                (Some(o), _) => Some(o),
                (None, Some(c)) => match c.get(tp) {
                    Some(o) => Some(*o),
                    None => self.reset_offset(tp).await,
                },
                (None, None) => None,
            };
            let mut s = shared.lock().expect("consumer state lock");
            s.owned.insert(tp.clone());
            match offset {
                Some(offset) => {
                    s.positions.insert(tp.clone(), offset);
                    starts.push((tp.clone(), offset));
                }
                None => {
                    self.awaiting.entry(tp.clone()).or_insert(asked);
                }
            }
        }
        // The application hears of the assignment before any of its records.
        push_event(shared, tx, Event::Assigned(set.iter().cloned().collect()));
        for (tp, offset) in starts {
            if !self.paused.contains(&tp) {
                self.start_fetcher(tp, offset, tx, shared);
            }
        }
    }

    /// Asks again for the committed offsets of the owned partitions still
    /// waiting for them; starts those it gets. Tells the application once
    /// they have waited [`OFFSETS_ERROR_AFTER`].
    async fn retry_awaiting(&mut self, tx: &mpsc::Sender<Item>, shared: &Arc<Mutex<Shared>>) {
        let set: BTreeSet<Tp> = self.awaiting.keys().cloned().collect();
        let oldest = self.awaiting.values().min().copied().unwrap_or_else(Instant::now);
        if !self.awaiting_told && oldest.elapsed() >= OFFSETS_ERROR_AFTER {
            self.awaiting_told = true;
            tracing::error!(
                error = self.awaiting_error,
                partitions = set.len(),
                "committed offsets still unavailable; still retrying"
            );
            let error = self.awaiting_error.clone();
            push_event(shared, tx, Event::OffsetsUnavailable { partitions: set.iter().cloned().collect(), error });
        }
        match self.committed(&set, OFFSETS_RETRY_CALL).await {
            Ok(committed) => {
                for tp in &set {
                    // Revoked or sought meanwhile: nothing to start.
                    if self.awaiting.remove(tp).is_none()
                        || !shared.lock().expect("consumer state lock").owned.contains(tp)
                    {
                        continue;
                    }
                    let offset = match committed.get(tp).copied() {
                        Some(o) => o,
                        None => match self.reset_offset(tp).await {
                            Some(o) => o,
                            None => {
                                // The range is not known yet: ask again.
                                self.awaiting.insert(tp.clone(), Instant::now());
                                continue;
                            }
                        },
                    };
                    tracing::info!(topic = tp.0, partition = tp.1, offset, "committed offset fetched; consuming");
                    shared.lock().expect("consumer state lock").positions.insert(tp.clone(), offset);
                    if !self.paused.contains(tp) {
                        self.start_fetcher(tp.clone(), offset, tx, shared);
                    }
                }
            }
            Err(e) => self.awaiting_error = e.to_string(),
        }
    }

    async fn committed(&self, set: &BTreeSet<Tp>, timeout: Duration) -> Result<HashMap<Tp, u64>, ClientError> {
        let Some(group) = self.group.clone() else { return Ok(HashMap::new()) };
        let req = v1::FetchOffsetsRequest { group, partitions: to_proto(set) };
        let r =
            self.client
                .on_meta_leader("group", timeout, |ch| {
                    let req = req.clone();
                    async move {
                        GroupsClient::new(ch).max_decoding_message_size(API_MESSAGE_LIMIT).fetch_offsets(req).await
                    }
                })
                .await?;
        Ok(r.offsets.into_iter().map(|o| ((o.topic, o.partition), o.offset.max(0) as u64)).collect())
    }

    /// Where the reset policy starts `tp`; `None` when the partition's range
    /// cannot be learned now (the partition then waits, as for a committed
    /// offset that could not be fetched: starting at 0 instead would replay
    /// it, and auto-commit would persist that).
    async fn reset_offset(&self, tp: &Tp) -> Option<u64> {
        let (start, end) = range_of(&self.client, &tp.0, tp.1).await?;
        Some(match self.config.offset_reset {
            OffsetReset::Earliest => start,
            OffsetReset::Latest => end,
        })
    }

    async fn commit(&self, shared: &Arc<Mutex<Shared>>, only: Option<&BTreeSet<Tp>>) -> Result<(), ClientError> {
        let Some(group) = self.group.clone() else { return Ok(()) };
        let offsets: Vec<v1::OffsetCommit> = {
            let s = shared.lock().expect("consumer state lock");
            s.positions
                .iter()
                .filter(|(tp, _)| only.is_none_or(|o| o.contains(*tp)))
                .map(|((t, p), o)| v1::OffsetCommit {
                    topic: t.clone(),
                    partition: *p,
                    offset: *o as i64,
                    metadata: String::new(),
                })
                .collect()
        };
        if offsets.is_empty() {
            return Ok(());
        }
        let req =
            v1::CommitOffsetsRequest { group, member_id: self.member_id.clone(), member_epoch: self.epoch, offsets };
        let call = self.client.on_meta_leader("group", COORDINATOR_TIMEOUT, |ch| {
            let req = req.clone();
            async move { GroupsClient::new(ch).max_decoding_message_size(API_MESSAGE_LIMIT).commit_offsets(req).await }
        });
        // Never past the self-fencing deadline: the heartbeat must get its
        // turn to give the partitions up in time.
        match self.fence_at() {
            Some(at) => match tokio::time::timeout_at(at.into(), call).await {
                Ok(r) => r.map(|_| ()),
                Err(_) => Err(ClientError::new(
                    ErrorKind::Timeout,
                    "commit: no answer before the member's self-fencing deadline",
                )),
            },
            None => call.await.map(|_| ()),
        }
    }

    /// When this member gives its partitions up if no heartbeat gets
    /// through (see `heartbeat`).
    fn fence_at(&self) -> Option<Instant> {
        self.last_ok_sent.map(|t| t + self.config.session_timeout.mul_f64(SELF_FENCE_FRACTION))
    }

    async fn leave(&self) {
        let Some(group) = self.group.clone() else { return };
        if self.member_id.is_empty() {
            return;
        }
        let req = v1::LeaveGroupRequest { group, member_id: self.member_id.clone() };
        let _ = self
            .client
            .on_meta_leader("group", COORDINATOR_TIMEOUT, |ch| {
                let req = req.clone();
                async move { GroupsClient::new(ch).max_decoding_message_size(API_MESSAGE_LIMIT).leave_group(req).await }
            })
            .await;
    }

    fn stop_fetcher(&mut self, tp: &Tp) {
        if let Some(f) = self.fetchers.remove(tp) {
            f.abort();
        }
    }

    fn start_fetcher(&mut self, tp: Tp, from: u64, tx: &mpsc::Sender<Item>, shared: &Arc<Mutex<Shared>>) {
        self.stop_fetcher(&tp);
        let generation = {
            let mut s = shared.lock().expect("consumer state lock");
            s.next_generation += 1;
            let g = s.next_generation;
            s.generations.insert(tp.clone(), g);
            g
        };
        let (client, tx, key) = (self.client.clone(), tx.clone(), tp.clone());
        let reset = self.config.offset_reset;
        let f = tokio::spawn(async move {
            let (topic, partition) = tp;
            let mut offset = from;
            loop {
                match client.fetch(&topic, partition, offset, FETCH_WAIT, COORDINATOR_TIMEOUT).await {
                    Ok((records, _)) => {
                        for record in records {
                            offset = record.offset + 1;
                            let e =
                                Item::Record(generation, ConsumedRecord { topic: topic.clone(), partition, record });
                            if tx.send(e).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::OffsetOutOfRange => {
                        // Only a position that retention deleted is reset
                        // (per the policy). A position past the end we were
                        // told is a replica behind what we already read:
                        // wait and ask again, never re-read from a reset.
                        match range_of(&client, &topic, partition).await {
                            Some((start, end)) if offset < start => {
                                let to = match reset {
                                    OffsetReset::Earliest => start,
                                    OffsetReset::Latest => end,
                                };
                                tracing::warn!(topic, partition, offset, to, "offset deleted by retention; resetting");
                                offset = to;
                            }
                            _ => tokio::time::sleep(Duration::from_millis(200)).await,
                        }
                    }
                    Err(e) => {
                        tracing::warn!(topic, partition, offset, error = %e, "fetch failed; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        self.fetchers.insert(key, f);
    }
}
